"""Code rewards: the last fenced code block of a response, run against its tests in the sandbox;
1.0 only if every test passes, else 0.0.

`tests` is either a Python test program run after the solution in the same namespace (HumanEval
style: `check(candidate)` plus the call), or a list of stdin / stdout cases ({"input", "output"}
dicts or (input, output) pairs), each run in its own process with the per-case wall limit and
compared line by line with trailing whitespace ignored.

The program runs on this interpreter with `-I -S`: the standard library only, no site-packages.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from flowrl_jax.rewards import sandbox

_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


def extract_code(response: str) -> str | None:
    """The body of the last closed ``` block (any language tag), or None."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else None


def make_limits(**limits) -> sandbox.Limits:
    known = {f.name for f in dataclasses.fields(sandbox.Limits)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise ValueError(f"unknown sandbox limit(s) {unknown}; known: {sorted(known)}")
    return sandbox.Limits(**limits)


def _cases(tests) -> list[tuple[str, str]]:
    cases = []
    for i, case in enumerate(tests):
        if isinstance(case, dict) and {"input", "output"} <= set(case):
            cases.append((case["input"], case["output"]))
        elif isinstance(case, (list, tuple)) and len(case) == 2:
            cases.append((case[0], case[1]))
        else:
            raise ValueError(
                f"test case {i} is {case!r}: expected {{'input': str, 'output': str}} or a pair"
            )
        if not all(isinstance(s, str) for s in cases[-1]):
            raise ValueError(f"test case {i}: input and output must be strings")
    if not cases:
        raise ValueError("no test cases: a solution with nothing to pass proves nothing")
    return cases


def same_output(got: str, want: str) -> bool:
    lines = lambda s: [line.rstrip() for line in s.rstrip().split("\n")]
    return lines(got) == lines(want)


def code_reward(response: str, tests: str | Sequence, **limits) -> float:
    """1.0 if the response's last code block passes every test in the sandbox, else 0.0.
    limits: `sandbox.Limits` fields (wall_s, cpu_s, memory_mb, processes, file_mb, ...)."""
    limits = make_limits(**limits)
    solution = extract_code(response)
    if isinstance(tests, str):
        if solution is None:
            return 0.0
        return float(sandbox.run_tests(solution, tests, limits).passed)
    cases = _cases(tests)
    if solution is None:
        return 0.0
    run = sandbox.run_io(solution, [i for i, _ in cases], limits)
    if not run.passed or len(run.cases) != len(cases):  # fewer: the runner stopped at a failure
        return 0.0
    return float(
        all(
            r["exit"] == 0 and not r["timed_out"] and same_output(r["stdout"], want)
            for r, (_, want) in zip(run.cases, cases)
        )
    )


def code_rewards(
    responses: Sequence[str], tests: Sequence, workers: int = 8, **limits
) -> list[float]:
    """code_reward for many responses, `workers` sandboxes at a time."""
    make_limits(**limits)  # a bad key fails here, not in a worker
    if len(responses) != len(tests):
        raise ValueError(f"{len(responses)} responses but {len(tests)} test sets")
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda rt: code_reward(*rt, **limits), zip(responses, tests)))


def humaneval_tests(problem: dict) -> str:
    """A HumanEval problem's test program, as `code_reward` takes it."""
    return f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
