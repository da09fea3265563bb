"""User data files as a task: math rows (a prompt and a gold answer) or code rows (a prompt and
tests), from .jsonl, .json or .parquet files.

Every row is checked when the file is read, so a bad row stops the run before any model is built,
with the file and line (`data/math.jsonl:17: missing field 'answer' ...`), not hours later inside
a reward thread.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Iterator

from ml_collections import ConfigDict

from flowrl_jax.tasks.base import Task

# kind -> (the field a row needs besides the prompt, the reward's module, its function). The reward
# modules are imported when a task is built, not when this module is: they have dependencies of
# their own (math verification, a code sandbox) that loading data does not need.
KINDS = {
    "math": ("answer", "flowrl_jax.rewards.math_answers", "answer_reward"),  # +-1 (the paper's)
    "code": ("tests", "flowrl_jax.rewards.code", "code_reward"),  # 0/1: all tests pass
}
SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A data file or row the task cannot use; the message starts with `path:` or `path:line:`."""


def task(config: ConfigDict) -> Task:
    """The file task of config.task: rows from task.path, scored by task.kind's reward."""
    check_kind(config.kind)
    custom = bool(config.get("reward", ""))  # the user's rewards: rows need a prompt alone
    rows = load(config.path, config.kind, dict(config.fields), prompt_only=custom)
    field, module_name, function = KINDS[config.kind]
    if custom:
        return Task(f"file:{config.path}", [r["prompt"] for r in rows], _unscored, 1.0, rows)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ImportError(
            f"task.kind={config.kind!r} scores with {module_name}.{function}, which does not "
            f"import: {e}"
        ) from e
    reward = functools.partial(score_row, module, function, field, rows)
    return Task(f"file:{config.path}", [r["prompt"] for r in rows], reward, 1.0, rows)


def score_row(
    module, function: str, field: str, rows: list[dict], response: str, row: int
) -> float:
    """module.function(response, rows[row][field]): a data row's reward."""
    # Looked up on every call, not bound once, so tests can swap the function on the module.
    return getattr(module, function)(response, rows[row][field])


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"task.kind={kind!r} is not a kind of data; known: {sorted(KINDS)}")


def _unscored(response: str, row: int) -> float:
    raise RuntimeError("this file task is scored by task.reward's functions")


def load(paths: str, kind: str, fields: dict | None = None, prompt_only: bool = False) -> list[dict]:
    """Rows of the comma-separated `paths`, in order, as dicts with the canonical keys "prompt",
    "answer" (math) or "tests" (code), "source" ("path:line") and "record" (the row as the file
    has it). `fields` maps the canonical names to the files' own (task.fields); names it leaves
    out keep their canonical name. prompt_only: rows need a prompt alone (the user's rewards
    score them)."""
    check_kind(kind)
    names = {"prompt": "prompt", "answer": "answer", "tests": "tests"} | dict(fields or {})
    wanted = ("prompt",) if prompt_only else ("prompt", KINDS[kind][0])
    # Scored by the user's functions: a gold answer or tests, where a row has them, are read (and
    # checked) too: evaluation keys answers by them.
    optional = ("answer", "tests") if prompt_only else ()
    parts = [p.strip() for p in paths.split(",") if p.strip()]
    if not parts:
        raise DataError("task.path is empty: give a data file (or several, comma-separated)")
    for path in parts:
        if path.startswith("/path/to/"):  # the shipped configs' placeholder
            raise DataError(
                f"task.path={path!r} is still the config's placeholder; pass "
                "--config.task.path=FILE (a .jsonl, .json or .parquet file of your data)"
            )
    return read_rows(parts, lambda source, record: _row(source, record, wanted, names, optional))


def read_rows(paths: list[str], make_row) -> list:
    """make_row(source, record) of every record of the files, in order; a file with no rows is an
    error that names it."""
    rows = []
    for path in paths:
        start = len(rows)
        for source, record in _records(path):
            rows.append(make_row(source, record))
        if len(rows) == start:
            raise DataError(f"{path}: no rows (an empty file?)")
    return rows


def _records(path: str) -> Iterator[tuple[str, object]]:
    """(source, record) for each row of one file; records are not checked yet."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue  # blank lines (a trailing newline, a spacer) are allowed
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})"
                    ) from None
                yield f"{path}:{n}", record
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(
                f"{path}: a .json file must hold a list of row objects, not a "
                f"{type(data).__name__} (one object a line: use .jsonl)"
            )
        for i, record in enumerate(data):
            yield f"{path}:row {i}", record
    elif path.endswith(".parquet"):
        import pyarrow as pa  # only parquet needs it
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except pa.ArrowException as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        # Rows are numbered from 0, as pyarrow and pandas number them.
        for i, record in enumerate(records):
            yield f"{path}:row {i}", record
    else:
        raise DataError(f"{path}: unknown file type; known: {', '.join(SUFFIXES)}")


def _row(source: str, record, wanted: tuple[str, ...], names: dict, optional=()) -> dict:
    """Check one record and return it with canonical keys (`optional` ones where it has them)."""
    if not isinstance(record, dict):
        raise DataError(f"{source}: a row must be a JSON object, not {type(record).__name__}")
    wanted = (*wanted, *(k for k in optional if names[k] in record))
    row = {}
    for key in wanted:
        name = names[key]
        if name not in record:
            raise DataError(
                f"{source}: missing field {name!r} (fields: {', '.join(map(str, record))}); "
                f"task.fields.{key} names the field that holds the {key}"
            )
        row[key] = _CHECKS[key](source, name, record[name])
    row["source"] = source
    row["record"] = record
    return row


def _prompt(source: str, name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{source}: field {name!r} (the prompt) must be a non-empty string")
    return value


def _answer(source: str, name: str, value) -> str:
    # bool is an int to Python, but `true` is no gold answer to a math problem.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(
            f"{source}: field {name!r} (the answer) must be a string or a number, not "
            f"{type(value).__name__}"
        )
    return str(value)


def _tests(source: str, name: str, value):
    """A Python test program (a string), or a non-empty list of {"input", "output"} strings."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value:
        for i, case in enumerate(value):
            if not (
                isinstance(case, dict)
                and isinstance(case.get("input"), str)
                and isinstance(case.get("output"), str)
            ):
                raise DataError(
                    f"{source}: field {name!r} (the tests), case {i}: each case must be an "
                    f'object {{"input": str, "output": str}}, got {str(case)[:80]}'
                )
        return value
    raise DataError(
        f"{source}: field {name!r} (the tests) must be a non-empty string (a test program) or a "
        f'non-empty list of {{"input": str, "output": str}}, not {str(value)[:80]}'
    )


_CHECKS = {"prompt": _prompt, "answer": _answer, "tests": _tests}
