"""The memory plan of every shipped recipe, phase by phase (`python -m flowrl_jax.plan` on each,
in a process of its own with the recipe's device count), as one table.

    python -m benchmarks.memory_plans [--out benchmarks/results/memory_plans]

Writes <out>.json and <out>.md and prints the table; the last line reads
`plans_fit 7b_math=<GB> 32b_math=<GB> 7b_code=<GB> hf_8b=<GB>`: each recipe's largest phase, GB
per device (CPU compiler's plan, see flowrl_jax/plan.py), or FAIL.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

RECIPES = {
    "7b_math": "configs/qwen2_5_7b_math.py",
    "32b_math": "configs/qwen2_5_32b_math.py",
    "7b_code": "configs/r1_distill_qwen_7b_code.py",
    "hf_8b": "configs/hf_checkpoint.py",
}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def plan(config: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plan.json")
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("XLA_FLAGS", None)
        run = subprocess.run(
            [sys.executable, "-m", "flowrl_jax.plan", f"--config={config}", f"--out={out}"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if not os.path.exists(out):
            raise RuntimeError(f"{config}: no plan\n{run.stdout}\n{run.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/memory_plans")
    args = parser.parse_args()
    plans = {}
    for name, config in RECIPES.items():
        print(f"planning {name} ({config}) ...", flush=True)
        plans[name] = plan(config)
    lines = [
        f"Memory plans, {datetime.date.today()}, {platform.node()}: "
        "`python -m benchmarks.memory_plans` (XLA's CPU compiler, abstract arrays)",
        "",
        "| recipe | hardware | phase | GB per device | of which resident | limit GB | fits "
        "| slots | micro-batches (or packed rows each) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    last = []
    for name, result in plans.items():
        hw = result["hardware"]
        where = f"{hw['devices']} x {hw['device_memory_gb']:g} GB"
        for x in result["phases"]:
            lines.append(
                f"| {name} | {where} | {x['program']} | {x['gb']:.1f} | {x['resident_gb']:.1f} "
                f"| {x['limit_gb']:g} | {'yes' if x['fits'] else 'NO'} | {x['slots']} "
                f"| {x['micro_batches']} |"
            )
        fits = all(x["fits"] for x in result["phases"])
        top = max(x["gb"] for x in result["phases"])
        last.append(f"{name}={top:.1f}" if fits else f"{name}=FAIL")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(plans, f, indent=1)
    print(text)
    print("plans_fit " + " ".join(last))


if __name__ == "__main__":
    main()
