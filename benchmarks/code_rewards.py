"""Code-reward throughput: R responses with 10 stdin/stdout tests each through the sandbox.

    python -m benchmarks.code_rewards [--responses 256] [--workers 8] [--wall 1.0]

The responses are a fixed mix of what a policy writes: correct (1/2), a wrong answer on one case
(1/4), a crash (1/8) and an infinite loop on the last case (1/8, runs into the per-test wall
limit). The bound the issue sets is the sum of every test's time limit divided by the worker count:
responses x tests x wall / workers. Overhead: the sandbox's fixed cost per response (namespaces,
mounts, two interpreters), measured on its own as the median wall time of a trivial program, and
the total's excess over the time the programs must take (the loops' limits / workers).
The last line reads `code_rewards seconds=<s> bound=<s> overhead_per_response=<s>`.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks import seconds
from flowrl_jax.rewards import code, sandbox

TESTS = 10
SOLUTION = "a, b = map(int, input().split())\nprint({})"
KINDS = {  # name: (program, expected reward, share of the responses out of 8)
    "correct": (SOLUTION.format("a + b"), 1.0, 4),
    "wrong": (SOLUTION.format("a + b + (a == 9)"), 0.0, 2),
    "crash": (SOLUTION.format("a + b") + "\nraise ValueError('boom')", 0.0, 1),
    "loop": ("a, b = map(int, input().split())\nwhile a == 9: pass\nprint(a + b)", 0.0, 1),
}


def make_work(responses: int):
    cases = [{"input": f"{i} {i * 7}\n", "output": f"{i * 8}\n"} for i in range(TESTS)]
    cycle = [name for name, (_, _, share) in KINDS.items() for _ in range(share)]
    names = [cycle[i % len(cycle)] for i in range(responses)]
    texts = [f"Solution:\n```python\n{KINDS[n][0]}\n```" for n in names]
    return names, texts, [cases] * responses


def fixed_cost(limits: sandbox.Limits, repeats: int = 10) -> float:
    return statistics.median(
        seconds(lambda: sandbox.run_io("print(1)", ["\n"], limits)) for _ in range(repeats)
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--wall", type=float, default=1.0, help="per-test wall limit (s)")
    args = parser.parse_args(argv)
    limits = {"wall_s": args.wall, "cpu_s": args.wall}
    names, texts, tests = make_work(args.responses)
    per_response = fixed_cost(code.make_limits(**limits))
    rewards = []
    total = seconds(
        lambda: rewards.extend(code.code_rewards(texts, tests, workers=args.workers, **limits))
    )
    wrong = [i for i, n in enumerate(names) if rewards[i] != KINDS[n][1]]
    if wrong:
        raise SystemExit(f"wrong rewards for responses {wrong[:10]} ({names[wrong[0]]}, ...)")
    bound = args.responses * TESTS * args.wall / args.workers
    must = names.count("loop") * args.wall / args.workers  # the loops run into their limit
    rows = [
        ("responses x tests", f"{args.responses} x {TESTS}"),
        ("workers", args.workers),
        ("per-test wall limit (s)", args.wall),
        ("total (s)", f"{total:.2f}"),
        ("bound: sum of limits / workers (s)", f"{bound:.1f}"),
        ("time the loops must take / workers (s)", f"{must:.2f}"),
        ("excess over that (s)", f"{total - must:.2f}"),
        ("fixed cost of one sandbox run, alone (s)", f"{per_response:.3f}"),
        ("responses / s", f"{args.responses / total:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(
        f"code_rewards seconds={total:.2f} bound={bound:.1f} "
        f"overhead_per_response={per_response:.3f}"
    )
    return {"total": total, "bound": bound, "fixed": per_response, "must": must}


if __name__ == "__main__":
    main()
