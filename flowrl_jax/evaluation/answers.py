"""A policy's distribution over each problem's correct answers, computed exactly (no sampling).

For a task that enumerates every correct answer of a problem (countdown), the policy's probability
of each answer is its teacher-forced sequence probability π(answer + EOS | prompt), the sum of the
token log-probs in the layout the trainer uses (prompt left-padded, response right-padded).
Normalised over the problem's correct set it is the policy's distribution *among* correct
answers; `compare` sets it against π_ref's (the warm-up model's):

    mass      Σ_y π(y): the probability that a response is one of the enumerated correct answers,
              written exactly as the task prints it (so a lower bound on being correct: `8*3` for
              the canonical `3*8` is correct too, but not counted here)
    tv        ½ Σ_y |p(y) − q(y)|, p, q = π, π_ref normalised over the correct set
    kl        KL(q ‖ p) = Σ q log(q / p): what the policy lost of π_ref's spread (it grows without
              bound as the policy collapses onto one answer π_ref shares with others)
    kl_back   KL(p ‖ q)
    entropy   the entropy of p (nats); exp(entropy) is an effective number of answers

With rewards equal on all correct answers, FlowRL's fixed point keeps π_ref's proportions among
them up to its length weighting (algorithms/flowrl.py): p*(y) ∝ q(y)·exp(|y|·c), c = β·r̂ − log Z.
`length_target` builds that p* so that a run's distance to its own target can be reported, from
the run's log Z head on each problem's prompt (`prompt_logz`) and the score r̂ a correct answer
expects under group normalisation at the policy's own success rate (`correct_score`).
"""

from __future__ import annotations

import functools
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import FrozenConfigDict

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.algorithms import heads
from flowrl_jax.models.model import forward
from flowrl_jax.rollout.logprobs import token_logprobs


def encode_answers(tokenizer, answers: list[str]) -> list[list[int]]:
    """Each answer's response token ids as the sampler would emit them: the text, then EOS."""
    return [
        tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for a in answers
    ]


def layout(prompt: list[int], response: list[int], P: int, N: int, pad_id: int):
    """One row as the trainer lays it out: (tokens [P + N], mask [P + N], response mask [P + N])."""
    tokens = np.full(P + N, pad_id, np.int32)
    mask = np.zeros(P + N, np.int32)
    tokens[P - len(prompt) : P] = prompt
    tokens[P : P + len(response)] = response
    mask[P - len(prompt) : P + len(response)] = 1
    response_mask = np.zeros(P + N, np.float32)
    response_mask[P : P + len(response)] = 1.0
    return tokens, mask, response_mask


@functools.partial(jax.jit, static_argnums=(0,))
def _sequence_logprobs(cfg, params, tokens, mask, response_mask):
    logp = token_logprobs(cfg, params, tokens, mask)
    return jnp.sum(logp * response_mask, axis=-1)


def _in_batches(items: list, rows: int, mesh, layout_rows, compute) -> np.ndarray:
    """compute(*arrays) over `items` in whole batches of `rows` (the last one padded with copies of
    the first item, so one compiled shape serves all), each laid out by layout_rows(batch) -> a
    tuple of [rows, ...] arrays and placed on `mesh`'s batch axes. -> float64 [len(items)]."""
    out = []
    for start in range(0, len(items), rows):
        batch = list(items[start : start + rows])
        live = len(batch)
        batch += [batch[0]] * (rows - live)
        arrays = layout_rows(batch)
        if mesh is not None:
            arrays = [mesh_lib.to_device(x, mesh_lib.batch_sharding(mesh, x.ndim)) for x in arrays]
        out.append(mesh_lib.to_host(compute(*arrays))[:live].astype(np.float64))
    return np.concatenate(out)


def sequence_logprobs(model, prompts, responses, pad_id: int, mesh=None, rows: int = 64):
    """log π(response | prompt) of each (prompt, response) pair of token-id lists, teacher-forced,
    in batches of `rows` (a multiple of the mesh's batch axes). -> float64 array."""
    if not prompts:
        return np.zeros(0)
    P = -(-max(len(p) for p in prompts) // 8) * 8  # a few shapes, so a few compiles
    N = -(-max(len(r) for r in responses) // 8) * 8
    return _in_batches(
        list(zip(prompts, responses)),
        rows,
        mesh,
        lambda pairs: [np.stack(x) for x in zip(*(layout(p, r, P, N, pad_id) for p, r in pairs))],
        functools.partial(_sequence_logprobs, model.cfg, model.params),
    )


def answer_logprobs(model, tokenizer, prompt_ids, answer_sets, mesh=None, rows: int = 64):
    """prompt_ids [problems] (token-id lists, chat template applied), answer_sets [problems] (the
    answers' texts) -> [problems] arrays of log π(answer + EOS | prompt)."""
    prompts, responses, owner = [], [], []
    for i, (p, answers) in enumerate(zip(prompt_ids, answer_sets, strict=True)):
        for r in encode_answers(tokenizer, list(answers)):
            prompts.append(list(p))
            responses.append(r)
            owner.append(i)
    flat = sequence_logprobs(model, prompts, responses, tokenizer.pad_token_id, mesh, rows)
    owner = np.asarray(owner, np.int64)
    return [flat[owner == i] for i in range(len(prompt_ids))]


def normalise(logp) -> np.ndarray:
    """Log-probs of a set -> the distribution over the set (a stable softmax)."""
    logp = np.asarray(logp, np.float64)
    w = np.exp(logp - logp.max())
    return w / w.sum()


def distances(policy_logp, ref_logp) -> dict:
    """The figures of one problem (module doc) from the log-probs of its correct answers under the
    policy and under π_ref."""
    p, q = normalise(policy_logp), normalise(ref_logp)
    tiny = 1e-300  # 0·log 0 = 0
    return {
        "mass": float(np.exp(np.asarray(policy_logp, np.float64)).sum()),
        "tv": float(0.5 * np.abs(p - q).sum()),
        "kl": float(np.sum(q * (np.log(q + tiny) - np.log(p + tiny)))),
        "kl_back": float(np.sum(p * (np.log(p + tiny) - np.log(q + tiny)))),
        "entropy": float(-np.sum(p * np.log(p + tiny))),
    }


def length_target(ref_logp, lengths, c: float) -> np.ndarray:
    """FlowRL's fixed point among the correct answers: q(y)·exp(|y|·c), normalised."""
    return normalise(np.asarray(ref_logp, np.float64) + np.asarray(lengths, np.float64) * c)


def correct_score(p: float, n: int) -> float:
    """E[r̂ | the answer is correct] for 0/1 rewards in a group of n (FlowRL's and GRPO's group
    normalisation, unbiased std, ε left out) when each of the other n − 1 samples is correct with
    probability p: with m correct in the group, r̂ = (1 − m/n) / std = sqrt((n − m)(n − 1) / (n·m)),
    and 0 when all n are (an all-equal group)."""
    total = 0.0
    for others in range(n):  # correct answers among the other n − 1
        m = others + 1
        weight = comb(n - 1, others) * p**others * (1 - p) ** (n - 1 - others)
        total += weight * np.sqrt((n - m) * (n - 1) / (n * m))
    return float(total)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _prompt_logz(cfg, params, zc, tokens, mask):
    hidden = forward(cfg, params["policy"], tokens, mask, return_logits=False).hidden
    return heads.logz(params["logz_head"], hidden, mask, zc)


def prompt_logz(model, head_params, zc, prompt_ids, pad_id: int, mesh=None, rows: int = 64):
    """log Z_φ(x) of each prompt (token-id lists) under the policy `model` and the log-Z head's
    parameters, as the update computes it (the prompt's hidden states are those of the prompt
    alone: the decoder is causal) but without dropout. zc: config.heads.logz. -> float64 [n]."""
    P = -(-max(len(p) for p in prompt_ids) // 8) * 8
    params = {"policy": model.params, "logz_head": head_params}
    return _in_batches(
        list(prompt_ids),
        rows,
        mesh,
        lambda batch: [np.stack(x) for x in zip(*(layout(p, [], P, 0, pad_id)[:2] for p in batch))],
        functools.partial(_prompt_logz, model.cfg, params, FrozenConfigDict(zc)),
    )
