"""The tiny models built locally, without a download: a byte-level BPE tokenizer trained on a small
corpus (with Qwen's ChatML template) and small decoder configs per family. The default job and the
embedded configs run on them; the tests and benchmarks use them too (`BENCH_HF_CONFIGS`: the
larger shapes the benchmarks time)."""

from __future__ import annotations

import functools
import os
import tempfile

# --- tiny tokenizer ---
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
# Qwen's ChatML template, so prompts look like the ones the real checkpoints are trained on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_corpus() -> list[str]:
    """A deterministic corpus of arithmetic, answers and a little prose and code to train on."""
    lines = []
    for a in range(0, 60, 3):
        for b in range(1, 40, 7):
            lines.append(f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. Answer: {a + b}")
            lines.append(f"Compute {a} - {b}: the result is {a - b}, so the answer is {a - b}.")
    lines += [
        "Let us think step by step. First add the numbers, then check the answer.",
        "The final answer is \\boxed{42}.",
        "def solve(x):\n    return x * 2 + 1\n",
        "Use the numbers 3, 5 and 7 once each to make 22: 3 * 5 + 7 = 22.",
    ]
    return lines


def make_tiny_tokenizer(path: str, vocab_size: int = 512) -> str:
    """Train a byte-level BPE on tiny_corpus() and save it as an HF tokenizer directory (with the
    ChatML template, eos '<|im_end|>', pad '<|endoftext|>', left padding). Deterministic; < 1 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()  # any unicode string round-trips through bytes
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    return path


@functools.cache
def tiny_tokenizer_dir() -> str:
    """The default tiny tokenizer, saved once per process in a temporary directory of its own
    (removed at exit)."""
    scratch = tempfile.TemporaryDirectory(prefix="flowrl-jax-tokenizer-")
    _SCRATCH.append(scratch)  # kept alive until the process ends
    return make_tiny_tokenizer(scratch.name)


_SCRATCH: list = []


# --- tiny models ---
# One tiny config per family, shaped to exercise what differs between them: Qwen2 q/k/v biases and
# tied embeddings, Qwen3 q/k norms, Llama 3.1 rope scaling (all three frequency bands: with
# head_dim 16 and original_max_position_embeddings 32 some wavelengths are kept, some stretched,
# some interpolated).
_TINY_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    bos_token_id=None,
    eos_token_id=2,
    pad_token_id=0,
)
TINY_HF_CONFIGS = {
    "qwen2": dict(_TINY_COMMON, model_type="qwen2", rope_theta=10000.0, tie_word_embeddings=True),
    "qwen3": dict(
        _TINY_COMMON,
        model_type="qwen3",
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        attention_bias=False,
    ),
    "llama": dict(
        _TINY_COMMON,
        model_type="llama",
        rope_theta=500000.0,
        tie_word_embeddings=False,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
}
FAMILIES = tuple(TINY_HF_CONFIGS)

# The benchmark shapes the issues compare against transformers (Qwen3-shaped, fp32 on the CPU).
BENCH_HF_CONFIGS = {
    name: dict(
        model_type="qwen3",
        head_dim=64,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **shape,
    )
    for name, shape in {
        "tiny": dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
        ),
        "small": dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=2048,
        ),
    }.items()
}


def tiny_config(family: str, **overrides):
    """Our DecoderConfig for the tiny model of `family`."""
    from flowrl_jax.models.families import config_from_hf

    return config_from_hf(TINY_HF_CONFIGS[family], **overrides)
