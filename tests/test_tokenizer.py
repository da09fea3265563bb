"""The tiny tokenizer is a real HF tokenizer directory: AutoTokenizer loads it, text round-trips,
the chat template renders ChatML, padding is on the left, and building it is deterministic."""

import filecmp
import os

import pytest
from transformers import AutoTokenizer

from flowrl_jax import testing
from flowrl_jax.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def test_loads_through_auto_tokenizer(tmp_path):
    path = testing.make_tiny_tokenizer(str(tmp_path), vocab_size=300)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) <= 300
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(path))


@pytest.mark.parametrize(
    "text",
    [
        "12 + 30 = 42",
        "Answer: \\boxed{7}\n\nnext line",
        "∑ é 中文 🙂",
        "  leading spaces\tand tabs",
        "",
    ],
)
def test_text_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in testing.SPECIAL_TOKENS]
    assert ids == [0, 1, 2]
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 2
    assert tokenizer("<|im_start|>user<|im_end|>")["input_ids"][0] == 1
    assert tokenizer("<|im_start|>user<|im_end|>")["input_ids"][-1] == 2


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert without == text[: -len("<|im_start|>assistant\n")]


def test_pads_on_the_left(tokenizer):
    batch = tokenizer(["a", "abc def ghi"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long)
    n_pad = batch["attention_mask"][0].count(0)
    assert n_pad > 0 and short[:n_pad] == [0] * n_pad and batch["attention_mask"][0][-1] == 1


def test_deterministic(tmp_path):
    a = testing.make_tiny_tokenizer(str(tmp_path / "a"))
    b = testing.make_tiny_tokenizer(str(tmp_path / "b"))
    assert filecmp.cmp(
        os.path.join(a, "tokenizer.json"), os.path.join(b, "tokenizer.json"), shallow=False
    )


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory .* does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
