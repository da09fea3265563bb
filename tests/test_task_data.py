"""Task data: user files (jsonl, json, parquet) with their row checks and `path:line` errors,
reasoning-gym tasks and their reward, the up-front prompt encoding with its length filter and
report, and the rows each host would own."""

import json
import logging

import numpy as np
import pytest

from flowrl_jax import tasks, testing
from flowrl_jax.config import base_config
from flowrl_jax.models import load_tokenizer
from flowrl_jax.tasks import DataError, files
from flowrl_jax.trainer.data import PromptOrder, PromptSource, shard_count, shard_rows


def write_jsonl(path, lines):
    """Objects one a line; strings (blank lines, broken JSON) as they are."""
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
    return str(path)


def task_config(**overrides):
    config = tasks.default_config()
    config.update(overrides)
    return config


# --- files ---


def test_jsonl_with_custom_field_names(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"question": "1 + 1?", "gold": 2, "extra": "ignored"},
            "\n",  # blank lines between rows are allowed
            "  \n",
            {"question": "Half of 3?", "gold": "3/2"},
        ],
    )
    rows = files.load(path, "math", {"prompt": "question", "answer": "gold"})
    records = [{"question": "1 + 1?", "gold": 2, "extra": "ignored"}]
    records.append({"question": "Half of 3?", "gold": "3/2"})
    assert rows == [  # a number becomes a string; the row as the file has it is kept beside
        {"prompt": "1 + 1?", "answer": "2", "source": f"{path}:1", "record": records[0]},
        {"prompt": "Half of 3?", "answer": "3/2", "source": f"{path}:4", "record": records[1]},
    ]


def test_parquet_and_json_and_several_paths(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cases = [[{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "6\n"}], "assert f(1)"]
    table = pa.table({"problem": ["add one", "write f"], "checks": [cases[0], None]})
    # A column holds one type: the string tests go in the .json file.
    pq.write_table(table.slice(0, 1), str(tmp_path / "code.parquet"))
    (tmp_path / "code.json").write_text(json.dumps([{"problem": "write f", "checks": cases[1]}]))
    paths = f"{tmp_path / 'code.parquet'}, {tmp_path / 'code.json'}"
    rows = files.load(paths, "code", {"prompt": "problem", "tests": "checks"})
    assert [r["prompt"] for r in rows] == ["add one", "write f"]
    assert rows[0]["tests"] == cases[0] and rows[1]["tests"] == cases[1]
    assert rows[0]["source"] == f"{tmp_path / 'code.parquet'}:row 0"
    assert rows[1]["source"] == f"{tmp_path / 'code.json'}:row 0"
    # Parquet answers keep their column type until the check turns numbers into strings.
    pq.write_table(pa.table({"prompt": ["p"], "answer": [7]}), str(tmp_path / "m.parquet"))
    assert files.load(str(tmp_path / "m.parquet"), "math")[0]["answer"] == "7"


def test_a_missing_field_names_the_file_line_and_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [{"prompt": "a", "answer": "1"}, "\n", {"prompt": "b", "solution": "2"}],
    )
    with pytest.raises(DataError) as e:
        files.load(path, "math")
    assert str(e.value).startswith(f"{path}:3: missing field 'answer' (fields: prompt, solution)")
    assert "task.fields.answer" in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "line, kind, reason",
    [
        ('{"prompt": "a", "answer": \n', "math", "not valid JSON"),
        ('["prompt", "answer"]\n', "math", "must be a JSON object, not list"),
        ('{"prompt": "", "answer": "1"}\n', "math", "'prompt' (the prompt) must be a non-empty"),
        ('{"prompt": "a", "answer": true}\n', "math", "must be a string or a number, not bool"),
        ('{"prompt": "a", "answer": [1]}\n', "math", "must be a string or a number, not list"),
        ('{"prompt": "a", "tests": 3}\n', "code", "'tests' (the tests) must be a non-empty"),
        ('{"prompt": "a", "tests": []}\n', "code", "'tests' (the tests) must be a non-empty"),
        ('{"prompt": "a", "tests": [{"input": "1"}]}\n', "code", "case 0: each case must be"),
        ('{"prompt": "a", "tests": [{"input": 1, "output": "2"}]}\n', "code", "case 0"),
    ],
)
def test_a_bad_row_names_its_line(tmp_path, line, kind, reason):
    good = '{"prompt": "ok", "answer": "1", "tests": "assert True"}\n'
    path = write_jsonl(tmp_path / "data.jsonl", [good, good, line])
    with pytest.raises(DataError, match="^" + f"{path}:3: ".replace(".", r"\.")) as e:
        files.load(path, kind)
    assert reason in str(e.value)


def test_empty_missing_and_unknown_files(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    blank = write_jsonl(tmp_path / "blank.jsonl", ["\n", "  \n"])
    for path in (empty, blank):
        with pytest.raises(DataError, match=f"{path}: no rows"):
            files.load(path, "math")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="empty.json: no rows"):
        files.load(str(tmp_path / "empty.json"), "math")
    (tmp_path / "object.json").write_text('{"prompt": "a"}')
    with pytest.raises(DataError, match="must hold a list of row objects, not a dict"):
        files.load(str(tmp_path / "object.json"), "math")
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        files.load(str(tmp_path / "nope.jsonl"), "math")
    (tmp_path / "data.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"data.csv: unknown file type; known: \.jsonl"):
        files.load(str(tmp_path / "data.csv"), "math")
    with pytest.raises(DataError, match="task.path is empty"):
        files.load(" , ", "math")


def test_unknown_kind_and_task_names():
    with pytest.raises(ValueError, match=r"task.kind='proof' is not a kind of data; known: \["):
        tasks.get(task_config(name="file", kind="proof", path="x.jsonl"))
    with pytest.raises(ValueError, match=r"task.name='gsm9k' is not a known task; known: \["):
        tasks.get("gsm9k")
    digits = tasks.get(base_config().task)  # the embedded default, from the config or by name
    assert digits.name == "digits" and list(digits.prompts) == list(tasks.get("digits").prompts)


@pytest.mark.parametrize(
    "kind, module, function, gold",
    [
        ("math", "flowrl_jax.rewards.math_answers", "answer_reward", "42"),
        ("code", "flowrl_jax.rewards.code", "code_reward", [{"input": "1", "output": "2"}]),
    ],
)
def test_file_task_scores_with_its_kinds_reward(
    tmp_path, monkeypatch, kind, module, function, gold
):
    # Only the wiring: the reward functions are tested with their own modules.
    rewards = pytest.importorskip(module)
    calls = []
    monkeypatch.setattr(rewards, function, lambda *args: calls.append(args) or 1.0)
    field = "answer" if kind == "math" else "tests"
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "other", field: "x"}, {"q": "p", field: gold}])
    task = tasks.get(task_config(name="file", kind=kind, path=path, fields={"prompt": "q"}))
    assert task.reward("the response", 1) == 1.0 and task.solved == 1.0
    assert calls == [("the response", gold)]
    assert task.rows[1][field] == gold and list(task.prompts) == ["other", "p"]


# --- reasoning-gym ---


def test_gym_task_prompts_and_reward():
    pytest.importorskip("reasoning_gym")
    config = task_config(name="gym:basic_arithmetic", gym_size=5)
    task = tasks.get(config, seed=3)
    assert task.name == "gym:basic_arithmetic" and len(task.prompts) == len(task.rows) == 5
    assert task.prompts == [tasks.get(config, seed=3).prompts[i] for i in range(5)]  # seeded
    assert task.prompts != tasks.get(config, seed=4).prompts
    for i, row in enumerate(task.rows):
        gold = row["answer"]
        assert row["entry"]["question"] in task.prompts[i] and "<answer>" in task.prompts[i]
        # The last <answer> counts, as in reasoning-gym's own evaluation.
        right = f"Work: {gold}?\n<answer>0</answer> no, <answer> {gold} </answer>"
        assert task.reward(right, i) == 1.0 >= task.solved
        assert task.reward("<answer>seven</answer>", i) == 0.0
        # reasoning-gym's partial credit: an answer that contains the gold one, but is not it.
        assert 0.0 < task.reward(f"<answer>{gold}1</answer>", i) < task.solved
        assert task.reward(f"The answer is {gold}.", i) == 0.0  # no tags: no answer


def test_gym_config_json_and_its_errors():
    pytest.importorskip("reasoning_gym")
    config = task_config(name="gym:basic_arithmetic", gym_size=4)
    config.gym_config = '{"min_terms": 2, "max_terms": 2}'  # what --config.task.gym_config= sets
    task = tasks.get(config)
    assert all(r["entry"]["metadata"]["num_terms"] == 2 for r in task.rows)
    config.gym_config = '{"no_such_field": 1}'
    with pytest.raises(ValueError, match=r"task.gym_config=.*no_such_field.*config fields: .*"):
        tasks.get(config)
    config.gym_config = '{"size": 9}'
    with pytest.raises(ValueError, match="use task.gym_size and config.seed"):
        tasks.get(config)
    config.gym_config = "min_terms=2"
    with pytest.raises(ValueError, match="is not valid JSON"):
        tasks.get(config)


def test_unknown_gym_name_lists_close_ones():
    pytest.importorskip("reasoning_gym")
    with pytest.raises(ValueError, match=r"no dataset 'basic_arithmatic'; close: basic_arithmetic"):
        tasks.get(task_config(name="gym:basic_arithmatic"))


# --- prompt encoding ---


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def test_encoding_drops_long_prompts_and_says_so(tmp_path, tokenizer, caplog):
    lines = [{"prompt": "1 + 2 = ?" * (1 + 10 * (i % 3 == 1)), "answer": "3"} for i in range(9)]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    rows = files.load(path, "math")
    task = tasks.Task("file", [r["prompt"] for r in rows], lambda r, i: 0.0, rows=rows)
    full = tasks.encode_prompts(task, tokenizer, 0)
    assert full.rows == list(range(9)) and full.report == "kept 9 of 9 prompts"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": lines[0]["prompt"]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert full.ids[0].tolist() == tokenizer(text)["input_ids"]  # the chat template, once
    short, long = len(full.ids[0]), len(full.ids[1])
    with caplog.at_level(logging.INFO, logger="flowrl_jax"):
        kept = tasks.encode_prompts(task, tokenizer, short + 1)
    assert kept.rows == [0, 2, 3, 5, 6, 8]
    assert [x.tolist() for x in kept.ids] == [full.ids[i].tolist() for i in kept.rows]
    expected = (
        f"kept 6 of 9 prompts; dropped 3 longer than {short + 1} tokens (longest {long}): "
        f"{path}:2, {path}:5, {path}:8"
    )
    assert kept.report == expected
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"task file: {expected}")
    ]
    with pytest.raises(
        ValueError, match=f"no prompt fits: kept 0 of 9 prompts.*shortest has {short}"
    ):
        tasks.encode_prompts(task, tokenizer, short - 1)
    system = tasks.encode_prompts(task, tokenizer, 0, system_prompt="Be brief.")
    assert tokenizer.decode(system.ids[0]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    # The kept prompts are what the order permutes: deterministic from the seed, every row once.
    order = PromptOrder(len(kept.ids), seed=5).take(12)
    assert order == PromptOrder(len(kept.ids), seed=5).take(12)
    assert sorted(order[:6]) == list(range(6)) and order[:6] != order[6:]


def test_prompt_limit_follows_the_sampler_buckets():
    config = base_config()
    assert tasks.prompt_limit(config) == max(config.rollout.prompt_buckets)
    config.task.max_prompt_len = 100
    assert tasks.prompt_limit(config) == 100
    config.task.max_prompt_len = max(config.rollout.prompt_buckets) + 1
    with pytest.raises(ValueError, match="longer than the largest rollout.prompt_buckets"):
        tasks.prompt_limit(config)


# --- hosts ---


@pytest.mark.parametrize("size, count", [(10, 3), (2, 4), (8, 2), (7, 1)])
def test_shard_rows_split_the_rows_evenly(size, count):
    rows = list(range(size))
    shards = [shard_rows(rows, i, count) for i in range(count)]
    assert sorted(sum(shards, [])) == rows  # disjoint (no duplicates) and complete
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(r % count == i for i, s in enumerate(shards) for r in s)
    with pytest.raises(ValueError, match="shard index 3"):
        shard_rows(rows, 3, 3)


def test_the_paper_configs_data_placeholder_is_refused():
    config = tasks.default_config()
    config.name, config.path = "file", "/path/to/math_train.jsonl"
    with pytest.raises(ValueError, match="placeholder; pass --config.task.path=FILE"):
        tasks.get(config)


def test_data_shards_split_the_rows_and_resume(tmp_path):
    tok = load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path / "tok")))
    task = tasks.get("digits")
    n = len(task.prompts)

    def source(shards, seed=0):
        return PromptSource(task, tok, 0, "", seed, True, shards)

    # One shard is the unsharded order exactly (checkpoints of earlier runs stay valid).
    one = source(1)
    assert [one.take(4)[1] for _ in range(3)] == [
        r.tolist() for r in np.split(np.asarray(PromptOrder(n, 0).take(12)), 3)
    ]
    # Two shards: each batch is 2 draws from the even rows, then 2 from the odd ones.
    two = source(2)
    batches = [two.take(4)[1] for _ in range(n // 4)]  # one epoch of each shard
    assert all(r % 2 == 0 for b in batches for r in b[:2])
    assert all(r % 2 == 1 for b in batches for r in b[2:])
    assert sorted(r for b in batches for r in b) == list(range(n))  # each row once an epoch
    ids, rows = two.take(2)
    again = source(2)
    again.restore(two.state())
    assert again.take(4)[1] == two.take(4)[1]
    text = tok.apply_chat_template(
        [{"role": "user", "content": task.prompts[rows[0]]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert ids[0].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="shard count must stay the same"):
        source(1).restore(two.state())
    with pytest.raises(ValueError, match="do not split over 2 data shards"):
        two.take(3)
    with pytest.raises(ValueError, match="multiple of the process count"):
        shard_count(0, 1)
    assert shard_count(-1, 4) == 4 and shard_count(8, 4) == 8
    assert shard_count(1, 4) == 1  # one shard, every process's (the shipped default)
    with pytest.raises(ValueError, match="multiple of the process count"):
        shard_count(6, 4)
