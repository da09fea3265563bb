"""docs/RESULTS.md from a finished comparison (`python -m flowrl_jax.compare --results_doc=...`):
how it was run (command, date, machine, software versions, wall time), its results.md and its
PNGs, all written by the command. A reading of the results in prose follows under the heading
`READING`; it is kept when the document is written again, so a rerun refreshes the figures
without erasing what was written about them (and the reading must then be checked against
them).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import time

from flowrl_jax import storage
from flowrl_jax.evaluation import report

READING = "## Reading"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers")


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


class Timing:
    """<out>/timing.json: the seconds each run of the comparison took when it ran (a run read back
    as finished keeps the time it took then), so a comparison resumed over several sessions still
    reports its whole cost."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "timing.json")
        self.seconds = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.seconds = json.load(f)

    def record(self, key: str, seconds: float) -> None:
        self.seconds[key] = seconds
        report.write_json(self.seconds, self.path)

    def total(self) -> float:
        return float(sum(self.seconds.values()))


NAMES = {
    "flowrl": "FlowRL",
    "flowrl_mean": "FlowRL (mean IS weight)",
    "grpo": "GRPO",
    "ppo": "PPO",
    "reinforce_pp": "REINFORCE++",
    "dapo": "DAPO",
    "gspo": "GSPO",
}


def title(names: list[str]) -> str:
    """The algorithms that ran, as the document's title names them."""
    shown = [NAMES.get(n, n) for n in names]
    if "flowrl" in names and len(names) > 1:
        others = [s for n, s in zip(names, shown) if n != "flowrl"]
        listed = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
        return f"FlowRL against {listed}"
    return ", ".join(shown)


def write(path: str, out: str, command: str, timing: Timing) -> str:
    """The document at `path`, its plots and results.json under <dir of path>/results/; -> path."""
    folder = os.path.dirname(os.path.abspath(path))
    plots = os.path.join(folder, "results")
    os.makedirs(plots, exist_ok=True)
    names = sorted(n for n in os.listdir(out) if n.startswith("results_") and n.endswith(".png"))
    for name in names + ["results.json"]:
        shutil.copy(os.path.join(out, name), os.path.join(plots, name))
    with open(os.path.join(out, "results.md")) as f:
        table = f.read().split("\n", 1)[1].strip()  # without its title
    reading = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if READING in old:
            reading = old[old.index(READING) :].strip()
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    runs = "; ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(timing.seconds.items()))
    rel = os.path.relpath(plots, folder)
    lines = [
        f"# Results: {title([n for n in results['runs'] if n != 'warmup'])}",
        "",
        "Everything above the reading is written by the comparison itself "
        "(flowrl_jax/evaluation/results_doc.py) from its run's files.",
        "",
        f"- Command: `{command}`",
        f"- Date: {time.strftime('%Y-%m-%d')}",
        f"- Machine: {report.describe_machine(results.get('machine'))}",
        f"- Software: {versions()}",
        f"- Wall time: {timing.total() / 60:.1f} min in all (the runs as they ran: {runs})",
        f"- Every figure: [{rel}/results.json]({rel}/results.json) (a copy of the run's)",
        "",
        table,
        "",
    ]
    for name in names:
        lines += [f"![{name}]({rel}/{name})", ""]
    lines.append(reading or f"{READING}\n\n(not written yet)")
    storage.write_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
