"""Rollout sampling: prefill, then a compiled decode loop (`lax.while_loop`) with the KV cache.

`generate` is the pure function (jit it, or compose it into a larger program); `Sampler` is the host
front end: it pads prompts into shape buckets so a run compiles a bounded number of programs, keeps
one compiled program per bucket, logs each compilation, and strips the padding rows again.

Rows: prompt i owns rows i*n ... i*n+n-1 (the group axis folded into the batch). Each row draws from
its own key, `split(rng, rows)[r]` folded with the step, so a row's sample depends only on the seed,
its index and its own history, not on the mesh or on the other rows.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import rules as R
from flowrl_jax.models.decoder import (
    Segments,
    decode_unrolled,
    positions_from_mask,
    split_layers,
)
from flowrl_jax.models.families import DecoderConfig
from flowrl_jax.rollout import slots as slots_lib
from flowrl_jax.rollout.sampling import (  # noqa: F401  (the sampler's names, as before)
    STOP_EOS,
    STOP_LENGTH,
    SampleOutput,
    SamplingParams,
    decode_weights,
    filter_logits,
    prefill,
    sample_token,
)

log = logging.getLogger(__name__)


def segment_sizes(max_new_tokens: int, segments: int) -> list[int]:
    """Split the response slots into `segments` nearly equal decode phases (at least 1 slot each)."""
    segments = max(1, min(segments, max_new_tokens))
    base, extra = divmod(max_new_tokens, segments)
    return [base + (i < extra) for i in range(segments)]


def generate(
    cfg: DecoderConfig,
    sp: SamplingParams,
    params,
    tokens,
    mask,
    live,
    rng,
    segments: int = 4,
    limits=None,
) -> SampleOutput:
    """tokens, mask [B, P] left-padded prompts; live [B] bool (False: a padding row, never sampled
    and never holding the loop open); rng: a PRNG key; limits: None, or [B * n] int32, each row's
    own response limit (at most max_new_tokens; benchmarks/sampler.py forces a table of lengths
    with it). Returns SampleOutput with R = B * n rows.

    Decoding runs the layers unrolled (decoder.decode_unrolled) over a KV cache in segments: the
    prompt's, then `segments` phases of the response, each its own while_loop that attends over the
    segments filled so far. Decode is memory-bound and reads the whole cache every step, so this
    reads about (P + N * (segments + 1) / (2 * segments)) slots a step instead of P + N; each phase
    adds one copy of the decode body to the compiled program."""
    n, N = sp.n, sp.max_new_tokens
    tokens = jnp.repeat(tokens, n, axis=0)  # [R, P]
    mask = jnp.repeat(mask, n, axis=0).astype(jnp.int32)
    live = jnp.repeat(live, n, axis=0)
    R, P = tokens.shape
    params = decode_weights(cfg, params)
    stops = jnp.asarray(sp.stop_tokens or (-1,), jnp.int32)
    row_keys = jax.random.split(rng, R)  # split(rng, R)[r] does not depend on R
    limits = jnp.full((R,), N, jnp.int32) if limits is None else limits

    kv_mask = jnp.concatenate([mask.astype(bool), jnp.zeros((R, N), bool)], axis=1)  # [R, P + N]
    positions = positions_from_mask(mask)
    out, first_logits = prefill(cfg, params, tokens, mask)
    layer_params = split_layers(params)

    def emit(state, logits):
        """Sample this step's token from logits and record it."""
        step, done = state["step"], state["done"]
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        token, logp = sample_token(logits, keys, sp)
        active = ~done
        token = jnp.where(active, token, sp.pad_id)
        hit = active & jnp.isin(token, stops)
        at = (0, step)
        return dict(
            state,
            token=token,
            done=done | hit | (step + 1 >= limits),
            stop_reason=jnp.where(hit, STOP_EOS, state["stop_reason"]),
            tokens=jax.lax.dynamic_update_slice(state["tokens"], token[:, None], at),
            mask=jax.lax.dynamic_update_slice(state["mask"], active[:, None].astype(jnp.int32), at),
            logprobs=jax.lax.dynamic_update_slice(
                state["logprobs"], jnp.where(active, logp, 0.0)[:, None], at
            ),
        )

    state = dict(
        step=jnp.int32(0),
        kv_mask=kv_mask,
        position=positions[:, -1] + 1,  # left padding: the last column is each row's last token
        done=~live,
        stop_reason=jnp.full((R,), STOP_LENGTH, jnp.int32),
        token=jnp.zeros((R,), jnp.int32),
        tokens=jnp.full((R, N), sp.pad_id, jnp.int32),
        mask=jnp.zeros((R, N), jnp.int32),
        logprobs=jnp.zeros((R, N), jnp.float32),
    )
    state = emit(state, first_logits)

    # The token emitted at step t is fed at step t + 1 into response slot t (cache slot P + t), so
    # the last token needs no slot: phases cover feeding steps 1 .. N-1 (slots 0 .. N-2).
    L, K, Dh, dt = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype)
    # Per layer: k [R, K, Dh, S_i], v [R, K, S_i, Dh]. Loop buffers are carried per layer: a stacked
    # [L, ...] carry would be rewritten whole every step.
    done_segments = [(list(out.cache["k"]), list(out.cache["v"]))]
    start = 0
    for size in segment_sizes(max(N - 1, 1), segments) if N > 1 else []:
        stop = start + size  # this phase writes slots [start, stop) and feeds steps start+1 .. stop
        window = P + stop

        def body(state, start=start, window=window):
            """Feed the last token (response slot `step`), then sample the next one."""
            slot = state["step"]
            emitted = jax.lax.dynamic_slice_in_dim(state["mask"], slot, 1, axis=1)  # [R, 1]
            kv_mask = jax.lax.dynamic_update_slice(
                state["kv_mask"], emitted.astype(bool), (0, P + slot)
            )
            caches = [
                Segments(
                    tuple(seg[0][i] for seg in done_segments) + (state["k"][i],),
                    tuple(seg[1][i] for seg in done_segments) + (state["v"][i],),
                    slot - start,
                )
                for i in range(L)
            ]
            out = decode_unrolled(
                cfg,
                params,
                layer_params,
                caches,
                state["token"][:, None],
                state["position"][:, None],
                kv_mask[:, :window],
                P + slot,
            )
            state = dict(
                state,
                k=[c.k[-1] for c in out.cache],
                v=[c.v[-1] for c in out.cache],
                kv_mask=kv_mask,
                position=state["position"] + 1,
                step=state["step"] + 1,
            )
            return emit(state, out.logits[:, 0])

        def cond(state, stop=stop):
            return (state["step"] < stop) & ~jnp.all(state["done"])

        state = dict(
            state,
            k=[jnp.zeros((R, K, Dh, size), dt) for _ in range(L)],
            v=[jnp.zeros((R, K, size, Dh), dt) for _ in range(L)],
        )
        state = jax.lax.while_loop(cond, body, state)
        done_segments.append((state.pop("k"), state.pop("v")))
        start = stop
    return SampleOutput(
        tokens, mask, state["tokens"], state["mask"], state["logprobs"], state["stop_reason"]
    )


DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_CACHE_SEGMENTS = 4


def default_config():
    """config.rollout: what the trainer samples with."""
    from ml_collections import ConfigDict

    return ConfigDict(
        {
            "n": 8,  # G: samples per prompt (FlowRL paper: 8)
            "max_new_tokens": 1024,  # paper: 8192 for math on Qwen2.5-7B
            "temperature": 1.0,  # paper: 1.0 for math rollouts, 0.6 for code
            "top_p": 1.0,
            "top_k": 0,
            "prompt_buckets": DEFAULT_PROMPT_BUCKETS,
            # Decode phases, each attending only over the slots filled so far.
            "cache_segments": DEFAULT_CACHE_SEGMENTS,
            # Tokens that end a response besides the tokenizer's EOS, comma-separated strings of
            # one token each, e.g. "<|im_end|>,<|endoftext|>". Training, evaluation and the
            # export's generation_config.json all stop on them.
            "stop_tokens": "",
            # The slot sampler (rollout/slots.py): decode slots in all, over the mesh's
            # data-parallel groups, each taking the next request as its own stops. 0 = derived
            # from kv_cache_gb; both 0 = the static batch (every request a row of one program).
            "slots": 0,
            "kv_cache_gb": 0.0,  # KV cache per device group (GB) for the slots; 0 = off
            "refill": True,  # a free slot takes the next request at once (False: waves)
            "prefill_rows": 1,  # slots per device group one refill prefills together
            # Once no request waits: up to this many phases of half as many slots, each entered
            # when the busy ones fit (the last long responses decode in fewer rows); 0 = off.
            "shrink": 2,
        }
    )


RULES = {
    "n": R.POSITIVE_INT,
    "max_new_tokens": R.POSITIVE_INT,
    "temperature": R.NON_NEGATIVE,  # 0 = greedy
    "top_p": R.PROBABILITY,
    "top_k": R.COUNT,  # 0 = off
    "prompt_buckets": R.Each(R.POSITIVE_INT),
    "cache_segments": R.POSITIVE_INT,
    "slots": R.COUNT,
    "kv_cache_gb": R.NON_NEGATIVE,
    "prefill_rows": R.POSITIVE_INT,
    "shrink": R.COUNT,
}


def stop_token_ids(tokenizer, stop_tokens: str) -> tuple[int, ...]:
    """The ids of rollout.stop_tokens ("a,b"): each must be one token of the tokenizer."""
    if not stop_tokens:
        return ()
    vocab = tokenizer.get_vocab()
    ids = []
    for text in [t for t in str(stop_tokens or "").split(",") if t]:
        if text in vocab:
            ids.append(int(vocab[text]))
            continue
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(
                f"rollout.stop_tokens: {text!r} is not one token of the tokenizer (it encodes as "
                f"{encoded}); each stop string must be a single token"
            )
        ids.append(int(encoded[0]))
    return tuple(ids)


def stops(tokenizer, stop_tokens: str) -> tuple[int, ...]:
    """Every id that ends a response: the tokenizer's EOS, then rollout.stop_tokens."""
    ids = [tokenizer.eos_token_id, *stop_token_ids(tokenizer, stop_tokens)]
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def _bucket(value: int, buckets, what: str) -> int:
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(
            f"{what} {value} is longer than the largest bucket {buckets[-1]}; add a bucket "
            f"(rollout.prompt_buckets) or shorten the input"
        )
    return buckets[i]


def bucket_of(length: int, buckets) -> int:
    """The prompt bucket a prompt of `length` tokens is padded to."""
    return _bucket(length, tuple(sorted(buckets)), "prompt length")


def batch_bucket(batch: int, mesh=None) -> int:
    """Rows a batch of `batch` prompts is padded to: the mesh's data-parallel size times the next
    power of two (any mesh with a shape, an AbstractMesh too)."""
    unit = 1 if mesh is None else mesh_lib.batch_size_divisor(mesh)
    size = unit
    while size < batch:
        size *= 2
    return size


def sample(
    cfg: DecoderConfig,
    sp: SamplingParams,
    cache_segments: int,
    plan: slots_lib.SlotPlan | None,
    params,
    tokens,
    mask,
    live,
    rng,
    limits=None,
) -> SampleOutput:
    """Every sampling program: the slot sampler under a SlotPlan, else the static batch
    (`generate` in `cache_segments` decode phases). Both return the same rows. limits: each
    row's response limit (see `generate`)."""
    if plan is None:
        return generate(cfg, sp, params, tokens, mask, live, rng, cache_segments, limits)
    return slots_lib.generate_slots(cfg, sp, plan, params, tokens, mask, live, rng, limits)


# `sample` compiled: (cfg, sp, cache_segments, plan, params, tokens, mask, live, rng) ->
# SampleOutput, the first four static.
jit_sample = jax.jit(sample, static_argnums=(0, 1, 2, 3))


class Sampler:
    """Host front end of `generate`: bucketing, one compiled program per bucket, padding rows.

    prompt_buckets: prompt lengths are left-padded up to the next bucket. Batches are padded up to
    the next power of two times the mesh's data-parallel size, with rows that are never sampled.
    """

    def __init__(
        self,
        cfg: DecoderConfig,
        mesh: Mesh | None = None,
        prompt_buckets=DEFAULT_PROMPT_BUCKETS,
        pad_id: int = 0,
        cache_segments: int = DEFAULT_CACHE_SEGMENTS,
        slots: slots_lib.SlotSettings | None = None,
    ):
        if cache_segments < 1:
            raise ValueError(f"rollout.cache_segments={cache_segments} must be >= 1")
        self.cfg, self.mesh, self.pad_id = cfg, mesh, pad_id
        self.cache_segments, self.slots = cache_segments, slots or slots_lib.SlotSettings()
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self._programs: dict = {}
        self.compile_seconds = 0.0

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    def batch_bucket(self, batch: int) -> int:
        return batch_bucket(batch, self.mesh)

    def pad(self, prompts: list[list[int]], min_batch: int = 0):
        """Token-id lists -> left-padded tokens, mask [Bb, Pb] and live [Bb] at the bucket shape
        (the batch bucket of at least `min_batch` rows)."""
        if not prompts:
            raise ValueError("no prompts to sample from")
        longest = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise ValueError("an empty prompt: every prompt needs at least one token")
        P = _bucket(longest, self.prompt_buckets, "prompt length")
        B = self.batch_bucket(max(len(prompts), min_batch))
        tokens = np.full((B, P), self.pad_id, np.int32)
        mask = np.zeros((B, P), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, P - len(p) :] = p
            mask[i, P - len(p) :] = 1
        mask[len(prompts) :, -1] = 1  # padding rows see one (pad) token, so their math stays finite
        live = np.arange(B) < len(prompts)
        return tokens, mask, live

    def plan(self, prompt_len: int, sp: SamplingParams) -> slots_lib.SlotPlan | None:
        """The SlotPlan of this sampler's program at a prompt bucket (None: the static batch)."""
        return plan_on(self.slots, self.cfg, prompt_len + sp.max_new_tokens, self.mesh)

    def _program(self, sp: SamplingParams, params, tokens, mask, live, rng, limits=None):
        key = (sp, tokens.shape, limits is None)
        if key not in self._programs:
            t0 = time.perf_counter()
            plan = self.plan(tokens.shape[1], sp)
            args = (self.cfg, sp, self.cache_segments, plan, params, tokens, mask, live, rng)
            with contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh):
                self._programs[key] = jit_sample.lower(*args, limits).compile()
            seconds = time.perf_counter() - t0
            self.compile_seconds += seconds
            log.info(
                "sampler: compiled program %d (batch %d, prompt %d, new %d, n %d, %s) in %.1f s",
                len(self._programs),
                tokens.shape[0],
                tokens.shape[1],
                sp.max_new_tokens,
                sp.n,
                "static batch" if plan is None else f"{plan.slots} slots",
                seconds,
            )
        return self._programs[key]

    def __call__(
        self,
        params,
        prompts: list[list[int]],
        rng,
        sp: SamplingParams,
        min_batch: int = 0,
        limits=None,
    ) -> SampleOutput:
        """Sample sp.n responses for each prompt (token-id lists). Returns host numpy arrays with
        exactly len(prompts) * n rows, the padding rows removed. min_batch: pad to the batch
        bucket of that many prompts (a short last batch then reuses the full batch's program).
        limits: None, or each row's response limit (len(prompts) * n ints, at most
        max_new_tokens): a forced length table, for benchmarks."""
        tokens, mask, live = self.pad(prompts, min_batch)
        if limits is not None:
            limits = np.asarray(limits, np.int32)
            if limits.shape != (len(prompts) * sp.n,) or limits.min() < 1:
                raise ValueError(f"limits: {len(prompts) * sp.n} positive lengths, one a row")
            limits = np.minimum(limits, sp.max_new_tokens)
            limits = np.pad(limits, (0, len(live) * sp.n - len(limits)), constant_values=1)
        if self.mesh is not None:
            sharding = mesh_lib.batch_sharding(self.mesh)
            tokens = mesh_lib.to_device(tokens, sharding)
            mask = mesh_lib.to_device(mask, sharding)
            live = mesh_lib.to_device(live, mesh_lib.batch_sharding(self.mesh, 1))
            if limits is not None:
                limits = mesh_lib.to_device(limits, mesh_lib.batch_sharding(self.mesh, 1))
        program = self._program(sp, params, tokens, mask, live, rng, limits)
        out = program(params, tokens, mask, live, rng, limits)
        rows = len(prompts) * sp.n
        return SampleOutput(*(mesh_lib.to_host(x)[:rows] for x in out))


def from_config(model_cfg: DecoderConfig, rollout, mesh, tokenizer, max_new_tokens=None):
    """(Sampler, SamplingParams) for `config.rollout`, stopping on the tokenizer's EOS and
    rollout.stop_tokens."""
    sampler = Sampler(
        model_cfg,
        mesh=mesh,
        prompt_buckets=tuple(rollout.prompt_buckets),
        pad_id=tokenizer.pad_token_id,
        cache_segments=rollout.cache_segments,
        slots=slot_settings(rollout),
    )
    return sampler, sampling_params(rollout, tokenizer, max_new_tokens)


def check_slots(rollout, cfg: DecoderConfig, mesh) -> None:
    """Refuse slot settings that cannot sample, before anything compiles: both keys set, a slot
    count the mesh's data-parallel groups cannot share, a KV-cache budget below one request of
    the smallest prompt bucket (a larger bucket is checked when its program is built)."""
    length = min(rollout.prompt_buckets) + rollout.max_new_tokens
    plan_on(slot_settings(rollout), cfg, length, mesh)


def plan_on(settings, cfg: DecoderConfig, length: int, mesh) -> slots_lib.SlotPlan | None:
    """settings.plan for slots of `length` positions on `mesh` (None: one device)."""
    if mesh is None:
        return settings.plan(cfg, length, 1)
    groups = mesh_lib.batch_size_divisor(mesh)
    return settings.plan(cfg, length, groups, slots_lib.tensor_split(mesh, cfg.num_kv_heads))


def slot_settings(rollout) -> slots_lib.SlotSettings:
    """config.rollout's slot keys."""
    return slots_lib.SlotSettings(
        slots=rollout.get("slots", 0),
        kv_cache_gb=rollout.get("kv_cache_gb", 0.0),
        refill=rollout.get("refill", True),
        prefill_rows=rollout.get("prefill_rows", 1),
        shrink=rollout.get("shrink", 2),
    )


def sampling_params(rollout, tokenizer, max_new_tokens=None) -> SamplingParams:
    """SamplingParams from a mapping with config.rollout's sampling keys (n, temperature, top_p,
    top_k, max_new_tokens, stop_tokens), stopping on the tokenizer's EOS and the stop tokens: the
    trainer's rollouts and the evaluation's samples are set up by this one function."""
    return SamplingParams(
        max_new_tokens=max_new_tokens or rollout["max_new_tokens"],
        n=rollout["n"],
        temperature=rollout["temperature"],
        top_p=rollout["top_p"],
        top_k=rollout.get("top_k", 0),
        stop_tokens=stops(tokenizer, rollout.get("stop_tokens", "")),
        pad_id=tokenizer.pad_token_id,
    )
