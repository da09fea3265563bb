"""Write evaluation results as `<prefix>.json` (everything) and `<prefix>.md` (one table)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence

from flowrl_jax import storage

# Table columns after "dataset", in this order; pass@k is expanded to every k the results have.
# mean@/maj@ are named after the sample count, so they are matched by prefix too.
_ORDER = (
    "mean@",
    "pass@",
    "maj@",
    "distinct_2",
    "correct_answers",
    "solution_paths",
    "pairwise_similarity",
    "judge",
)


def format_cell(value) -> str:
    """4 significant digits for floats, integers as integers, NaN/missing as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """A GitHub markdown table: a header of the column keys, then one line per row.

    A key a row lacks prints as 'n/a'; '|' in a cell is escaped so it cannot split the row.
    """

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(columns), "|" + "|".join("---" for _ in columns) + "|"]
    out += [line(format_cell(row.get(col)) for col in columns) for row in rows]
    return "\n".join(out) + "\n"


def report_columns(results: Mapping[str, Mapping]) -> list[str]:
    """'dataset' then the metric columns the results actually have, in `_ORDER` (pass@k by k)."""
    keys = {k for metrics in results.values() for k in metrics}
    cols = ["dataset"]
    for name in _ORDER:
        if name.endswith("@"):
            found = [k for k in keys if re.fullmatch(re.escape(name) + r"\d+", k)]
            cols += sorted(found, key=lambda k: int(k[len(name) :]))
        elif name in keys:
            cols.append(name)
    return cols


def _json_safe(obj):
    # NaN is not JSON (jq and most parsers reject Python's bare NaN), so it is written as null.
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(results: Mapping[str, Mapping], path_prefix: str) -> tuple[str, str]:
    """Write `results` ({dataset: metrics}, e.g. from `aggregate`) to `<prefix>.json` and `.md`.

    The JSON holds everything (NaN as null); the markdown has one row per dataset with the
    columns of `report_columns`. Returns the two paths.
    """
    # Each file whole (storage.write_atomic): a reader never sees a half-written report, and a
    # crash leaves the previous one intact. The prefix may be on object storage.
    directory = os.path.dirname(path_prefix)
    if directory:
        storage.makedirs(directory)
    json_path, md_path = path_prefix + ".json", path_prefix + ".md"
    storage.write_atomic(json_path, json.dumps(_json_safe(results), indent=1) + "\n")
    rows = [{"dataset": name, **metrics} for name, metrics in results.items()]
    storage.write_atomic(md_path, markdown_table(rows, report_columns(results)))
    return json_path, md_path


def write_json(obj, path: str) -> str:
    """Any result tree as JSON (NaN as null), atomically."""
    if os.path.dirname(path):
        storage.makedirs(os.path.dirname(path))
    storage.write_atomic(path, json.dumps(_json_safe(obj), indent=1) + "\n")
    return path


def cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine(dtype: str, param_dtype: str = "") -> dict:
    """What this process runs on, as a report records it: the host, its CPU, JAX's backend, the
    kind and number of devices, the processes, and the model's compute and parameter dtypes."""
    import platform

    import jax

    return {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "dtype": dtype,
        "param_dtype": param_dtype or dtype,
    }


def describe_machine(m: Mapping | None) -> str:
    """A machine record (`machine`) as one line of text."""
    if not m:
        return "not recorded by this run"
    devices = f"{m['devices']} {m['device_kind']} device{'s' if m['devices'] != 1 else ''}"
    return (
        f"{m['host']}, {m['cores']} cores ({m['cpu']}), {m['system']}; {devices} "
        f"(JAX backend {m['backend']}) in {m['processes']} process"
        f"{'es' if m['processes'] != 1 else ''}; compute {m['dtype']}, parameters {m['param_dtype']}"
    )

