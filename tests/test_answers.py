"""The exact distribution among correct answers (evaluation/answers.py): teacher-forced sequence
log-probs against the sampler's own and against a policy built by hand, and the distances against
hand computations."""

import math

import jax
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.evaluation import answers
from flowrl_jax.models import Model
from flowrl_jax.models.from_config import load_tokenizer
from flowrl_jax.rollout import STOP_EOS, Sampler, SamplingParams
from flowrl_jax.tasks import countdown
from flowrl_jax.tasks.prompts import encode_prompts


def bigram_model(table: np.ndarray) -> Model:
    """A qwen3-shaped model whose next-token distribution is softmax(table[current token]): every
    layer's output projections are zero (the residual stream stays the token's embedding), the
    embeddings are (scaled) one-hot, and the LM head reads the table's row back out of the RMS-normalised
    one-hot (which is sqrt(D) at the token's coordinate)."""
    V = table.shape[0]
    cfg = testing.tiny_config("qwen3", vocab_size=V)
    model = Model.random(cfg, 0)
    params = jax.tree.map(np.asarray, model.params)
    D = cfg.hidden_size
    assert D >= V
    params["layers"]["attn"]["o_proj"]["kernel"] = np.zeros_like(
        params["layers"]["attn"]["o_proj"]["kernel"]
    )
    params["layers"]["mlp"]["down_proj"]["kernel"] = np.zeros_like(
        params["layers"]["mlp"]["down_proj"]["kernel"]
    )
    # Large, so the norm's epsilon (1e-6 against a mean square of 1e6 / D) changes nothing.
    params["embed"]["embedding"] = 1000.0 * np.eye(V, D, dtype=np.float32)
    params["final_norm"]["scale"] = np.ones(D, np.float32)
    head = np.zeros((D, V), np.float32)
    head[:V] = table / math.sqrt(D)
    params["lm_head"]["kernel"] = head
    return Model(cfg, jax.tree.map(jax.numpy.asarray, params))


def test_a_hand_built_policy_gives_the_distribution_computed_by_hand():
    V = 32
    rng = np.random.default_rng(0)
    table = rng.normal(0, 2, size=(V, V))
    model = bigram_model(table)
    logp = table - np.log(np.exp(table).sum(1, keepdims=True))  # log softmax per row

    prompts = [[5, 7, 9], [5, 7, 9], [5, 7, 9], [3]]
    responses = [[4, 6, 2], [6, 2], [4, 4, 4, 8, 2], [11, 2]]

    def by_hand(prompt, response):
        seq = prompt + response
        return sum(logp[seq[t - 1], seq[t]] for t in range(len(prompt), len(seq)))

    expected = np.array([by_hand(p, r) for p, r in zip(prompts, responses)])
    mesh = mesh_lib.make_mesh()
    got = answers.sequence_logprobs(model, prompts, responses, pad_id=0, mesh=mesh, rows=8)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The first three are one problem's correct set: its distribution, by hand.
    p = np.exp(expected[:3]) / np.exp(expected[:3]).sum()
    np.testing.assert_allclose(answers.normalise(got[:3]), p, atol=1e-5)


@pytest.mark.slow  # CI: tests/test_sampler.py::test_sampling_logprobs_equal_a_full_recomputation
def test_teacher_forcing_equals_the_samplers_logprobs(tmp_path):
    """Responses the sampler drew (to countdown prompts, through the tiny tokenizer): the sum of
    its per-token log-probs equals the teacher-forced log-prob of the same tokens, for responses
    that stopped at EOS and responses cut at the length limit."""
    tokenizer = load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path / "tok")))
    cfg = testing.tiny_config("qwen3", vocab_size=len(tokenizer))
    model = Model.random(cfg, 3)
    mesh = mesh_lib.make_mesh()
    ids = encode_prompts(countdown.task("eval"), tokenizer, 0).ids[:4]
    sampler = Sampler(cfg, mesh=mesh, pad_id=tokenizer.pad_token_id)
    # Many stop tokens, so that a random model stops early on some rows.
    stop = tuple(range(3, len(tokenizer), 7))
    sp = SamplingParams(
        max_new_tokens=12, n=8, temperature=1.0, stop_tokens=stop, pad_id=tokenizer.pad_token_id
    )
    out = sampler(model.params, [x.tolist() for x in ids], jax.random.key(0), sp)
    assert 0 < (out.stop_reason == STOP_EOS).sum() < len(out.tokens)
    responses = [t[m == 1].tolist() for t, m in zip(out.tokens, out.mask)]
    prompts = [ids[i // sp.n].tolist() for i in range(len(responses))]
    got = answers.sequence_logprobs(model, prompts, responses, tokenizer.pad_token_id, mesh)
    np.testing.assert_allclose(got, out.logprobs.sum(1), atol=1e-5, rtol=0)


def test_answers_are_encoded_as_text_then_eos(tmp_path):
    tokenizer = load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path / "tok")))
    cfg = testing.tiny_config("qwen3", vocab_size=len(tokenizer))
    model = Model.random(cfg, 3)
    prompts = [[5, 6, 7], [8, 9]]
    sets = [["3*8", "(9-1)*3"], ["2+2"]]
    got = answers.answer_logprobs(model, tokenizer, prompts, sets)
    eos = tokenizer.eos_token_id
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    flat = answers.sequence_logprobs(
        model, [prompts[0], prompts[0], prompts[1]], [ids(a) for a in ["3*8", "(9-1)*3", "2+2"]], 0
    )
    assert [len(g) for g in got] == [2, 1]
    np.testing.assert_allclose(np.concatenate(got), flat, rtol=1e-6)


def test_distances_by_hand():
    q = np.array([0.5, 0.25, 0.25])
    p = np.array([0.8, 0.1, 0.1])
    scale = 0.3  # the policy's mass on the set
    d = answers.distances(np.log(p * scale), np.log(q * 0.05))
    assert d["mass"] == pytest.approx(scale)
    assert d["tv"] == pytest.approx(0.3)
    assert d["kl"] == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.25 / 0.1))
    assert d["kl_back"] == pytest.approx(0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.1 / 0.25))
    assert d["entropy"] == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.1)))
    same = answers.distances(np.log(q), np.log(q))
    assert same["tv"] == pytest.approx(0) and same["kl"] == pytest.approx(0, abs=1e-12)


def test_flowrl_length_target_by_hand():
    ref = np.log([0.5, 0.25, 0.25])
    lengths = [3, 5, 5]
    c = 0.2
    w = np.array([0.5 * math.exp(0.6), 0.25 * math.exp(1.0), 0.25 * math.exp(1.0)])
    np.testing.assert_allclose(answers.length_target(ref, lengths, c), w / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(answers.length_target(ref, lengths, 0.0), np.exp(ref), rtol=1e-12)


def test_correct_score_is_the_mean_group_score_of_a_correct_answer():
    """Against every outcome of the other n − 1 samples, each scored by the trainer's own group
    normalisation (advantages.group_normalize)."""
    import itertools

    import jax.numpy as jnp

    from flowrl_jax.algorithms import advantages

    n = 4
    for p in (0.0, 0.3, 0.8, 1.0):
        expected = 0.0
        for others in itertools.product((0.0, 1.0), repeat=n - 1):
            rewards = jnp.asarray((1.0,) + others)
            score = advantages.group_normalize(rewards, jnp.zeros(n, jnp.int32), eps=0.0)[0]
            score = 0.0 if not np.isfinite(score) else float(score)  # all correct: 0 / 0
            k = sum(others)
            expected += p**k * (1 - p) ** (n - 1 - k) * score
        assert answers.correct_score(p, n) == pytest.approx(expected, abs=1e-6)


def test_prompt_logz_is_the_updates_log_z(tmp_path):
    """log Z of each prompt alone, in its own padding, equals the head applied as the update applies
    it: pooled over the prompt part of prompt + response rows laid out with a longer prompt slot
    (the decoder is causal, so the response changes nothing)."""
    from flowrl_jax.algorithms import heads

    cfg = testing.tiny_config("qwen3")
    model = Model.random(cfg, 1)
    zc = heads.default_config().logz
    head_params = heads.init(
        jax.random.key(2), cfg.hidden_size, heads.default_config(), True, False
    )
    head_params = head_params["logz_head"]
    prompts = [[5, 7, 9], [3], [4, 4, 8, 2, 6]]
    got = answers.prompt_logz(model, head_params, zc, prompts, pad_id=0, rows=4)

    P, N = 16, 4
    rows = [answers.layout(p, [10, 11, 12, 2], P, N, 0) for p in prompts]
    tokens, mask, _ = (np.stack(x) for x in zip(*rows))
    from flowrl_jax.models.model import forward

    hidden = forward(cfg, model.params, tokens, mask, return_logits=False).hidden
    pooled = heads.pool_prompt(hidden[:, :P], mask[:, :P])
    expected = heads.LogZHead(zc.depth, zc.dropout).apply({"params": head_params}, pooled)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5, rtol=0)


def test_a_flowrl_runs_distance_to_its_own_target_by_hand():
    from flowrl_jax.evaluation import compare_report

    ref = {"logp": [np.log([0.5, 0.25, 0.25]).tolist(), np.log([0.9, 0.1]).tolist()]}
    policy = [np.log([0.2, 0.3, 0.5]) - 1.0, np.log([0.5, 0.5]) - 2.0]  # masses e^-1, e^-2
    exact = {
        "logp": [x.tolist() for x in policy],
        "lengths": [[3, 5, 5], [4, 4]],
        "flowrl": {
            "logz": [0.4, -0.1],
            "beta": 2.0,
            "group_size": 4,
            "reward_normalization": "group",
            "length_normalize": True,
        },
    }
    counts = [(8, 2), (8, 8)]  # sampled success rates 1/4 and 1
    got = compare_report.target_distances(exact, ref, counts)

    tv, kl = [], []
    for i, (total, correct) in enumerate(counts):
        c = 2.0 * answers.correct_score(correct / total, 4) - exact["flowrl"]["logz"][i]
        w = np.exp(ref["logp"][i]) * np.exp(np.asarray(exact["lengths"][i]) * c)
        target = w / w.sum()
        p = np.exp(policy[i]) / np.exp(policy[i]).sum()
        tv.append(0.5 * np.abs(p - target).sum())
        kl.append(np.sum(target * np.log(target / p)))
    assert got["tv_target"] == pytest.approx(np.mean(tv), rel=1e-9)
    assert got["kl_target"] == pytest.approx(np.mean(kl), rel=1e-9)
    # Answers of one length: the target is π_ref's proportions, whatever log Z and r̂ are.
    exact["lengths"] = [[5, 5, 5], [4, 4]]
    same = compare_report.target_distances(exact, ref, counts)
    plain = [answers.distances(policy[i], ref["logp"][i])["tv"] for i in range(2)]
    assert same["tv_target"] == pytest.approx(np.mean(plain), rel=1e-9)
