"""The slot sampler: a fixed number of decode slots that take their requests from a queue.

A rollout batch is R = B x n requests (prompt i, sample j at row i*n + j, as in `generate`). The
program holds the KV cache of `slots` rows, each as long as the prompt bucket plus the response
limit, whatever R is. Free slots take the next waiting requests and prefill them in place
(`prefill_rows` at a time, once that many are free or as many as there are requests left); then
each step decodes one token in every busy slot. A slot whose request stops (a stop token or the
length limit) is free again: with `refill` it takes the next request while the others go on;
without, a group's slots are filled together, as a static batch, once all of them are free.
Decode steps then follow the tokens sampled, not the longest
response times the batch.

Groups: the slots and the queue are split into `groups` equal parts, the data-parallel shards of
the mesh. A group's slots take its own requests only, so no cache row, prompt or output moves
between devices; every per-group array carries the group on its leading axis.

A request draws from `split(rng, R)[request]` folded with its response step, as `generate` draws
for its row, so every request samples the same tokens here as there, for any slot count, with or
without refilling (tests/test_slots.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as Spec

from flowrl_jax.mesh import BATCH_AXES
from flowrl_jax.models import kernels
from flowrl_jax.models.decoder import (
    RowCache,
    constrain_batch,
    decode_unrolled,
    on_own_rows,
    split_layers,
    to_bits,
)
from flowrl_jax.models.families import DecoderConfig
from flowrl_jax.rollout.sampling import (
    STOP_EOS,
    STOP_LENGTH,
    SampleOutput,
    SamplingParams,
    decode_weights,
    prefill,
    sample_token,
)


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """Static per program: the slots of one sampling program."""

    slots: int  # decode rows in all, a multiple of `groups`
    groups: int = 1  # independent slot groups (the mesh's data-parallel shards)
    refill: bool = True  # a free slot takes the next request at once (False: whole-group waves)
    prefill_rows: int = 1  # slots per group one refill prefills (with refill)
    shrink: int = 2  # phases of half as many slots once the queue is empty (0: none)

    def __post_init__(self):
        if self.groups < 1 or self.slots < self.groups or self.slots % self.groups:
            raise ValueError(
                f"rollout.slots={self.slots} must be a positive multiple of the mesh's "
                f"data-parallel size {self.groups} (each device group holds its own slots)"
            )
        if self.prefill_rows < 1:
            raise ValueError(f"rollout.prefill_rows={self.prefill_rows} must be >= 1")
        if self.shrink < 0:
            raise ValueError(f"rollout.shrink={self.shrink} must be >= 0")

    @property
    def per_group(self) -> int:
        return self.slots // self.groups

    def width(self) -> int:
        """Rows per group of one refill's prefill."""
        return min(self.prefill_rows, self.per_group) if self.refill else self.per_group


@dataclasses.dataclass(frozen=True)
class SlotSettings:
    """config.rollout's slot keys: how a run's sampling programs get their SlotPlan."""

    slots: int = 0  # decode slots in all; 0 = from kv_cache_gb, or (both 0) the static batch
    kv_cache_gb: float = 0.0  # KV cache per device group (GB) the slots may take
    refill: bool = True
    prefill_rows: int = 1
    shrink: int = 2

    def __post_init__(self):
        if self.slots < 0 or self.kv_cache_gb < 0:
            raise ValueError(
                f"rollout.slots={self.slots} and rollout.kv_cache_gb={self.kv_cache_gb} must be "
                ">= 0 (both 0: the static batch)"
            )
        if self.slots and self.kv_cache_gb:
            raise ValueError(
                f"rollout.slots={self.slots} and rollout.kv_cache_gb={self.kv_cache_gb}: set one "
                "(the slot count, or the memory it is derived from), not both"
            )

    @property
    def static(self) -> bool:
        return not (self.slots or self.kv_cache_gb)

    def plan(self, cfg: DecoderConfig, length: int, groups: int, split: int = 1) -> SlotPlan | None:
        """The SlotPlan of a program whose slots hold `length` positions (prompt bucket +
        response limit), on `groups` device groups that split each slot `split` ways; None: the
        static batch. Errors (a slot count
        the groups cannot share, a budget below one request) come before anything compiles."""
        if self.static:
            return None
        slots = self.slots or slots_for_budget(
            cfg, self.kv_cache_gb, window(cfg, length), groups, split
        )
        return SlotPlan(slots, groups, self.refill, self.prefill_rows, self.shrink)


def window(cfg: DecoderConfig, length: int) -> int:
    """Cache positions a slot holds for `length` (prompt bucket + response limit): that many, or
    under a decode kernel the next multiple of its blocks of keys (the positions past `length`
    are never written nor read)."""
    block = kernels.KEY_BLOCK
    return -(-length // block) * block if kernels.keys_major(cfg) else length


def phase_sizes(slots: int, shrink: int) -> list[int]:
    """Slots a group in each decode phase: `slots`, then up to `shrink` halvings, never below 2
    (at one row a device the partitioner laid the 32B recipe's decode weights out anew, a second
    copy: flowrl_jax.plan, 100 GB a device against 72)."""
    sizes = [slots]
    while len(sizes) <= shrink and sizes[-1] // 2 >= 2:
        sizes.append(sizes[-1] // 2)
    return sizes


def slot_bytes(cfg: DecoderConfig, length: int) -> int:
    """Bytes of one slot's KV cache: keys and values of every layer, `length` positions, in the
    compute dtype."""
    itemsize = jnp.dtype(cfg.dtype).itemsize
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * length * itemsize


def slots_for_budget(
    cfg: DecoderConfig, budget_gb: float, length: int, groups: int, split: int = 1
) -> int:
    """The slot count a KV-cache budget of `budget_gb` per device holds at `length` positions a
    slot (prompt bucket + response limit), in all over `groups` groups whose devices hold
    1 / `split` of each slot (`tensor_split`)."""
    per_slot = slot_bytes(cfg, length) // split
    per_group = int(budget_gb * 1e9 // per_slot)
    if per_group < 1:
        raise ValueError(
            f"rollout.kv_cache_gb={budget_gb} cannot hold one request: a slot of {length} "
            f"positions (prompt bucket + rollout.max_new_tokens) needs {per_slot / 1e9:.3f} GB of "
            f"KV cache in {cfg.dtype}"
        )
    return per_group * groups


def _pin(state, kv_heads: int):
    """Every array's leading axis (groups, or slots grouped) on the data-parallel mesh axes, and
    the cache's KV heads over "tensor" where they divide (each device of a group keeps the heads
    its share of the k / v projections computes)."""
    cache = {name: state[name] for name in ("k", "v")}
    state = jax.tree.map(constrain_batch, {k: v for k, v in state.items() if k not in cache})
    split = tensor_split(jax.sharding.get_abstract_mesh(), kv_heads)
    if split == 1:
        return state | jax.tree.map(constrain_batch, cache)
    # Not constrain_batch first: its spec holds the heads whole, and the partitioner would
    # gather them to honour it.
    heads = lambda x: jax.lax.with_sharding_constraint(x, Spec(BATCH_AXES, "tensor"))
    return state | jax.tree.map(heads, cache)


def tensor_split(mesh, kv_heads: int) -> int:
    """How many ways a slot's cache is split: the mesh's tensor size where it divides the KV
    heads, else 1."""
    if mesh is None or mesh.empty or "tensor" not in mesh.axis_names:
        return 1
    size = mesh.shape["tensor"]
    return size if kv_heads % size == 0 else 1


def generate_slots(
    cfg: DecoderConfig,
    sp: SamplingParams,
    plan: SlotPlan,
    params,
    tokens,
    mask,
    live,
    rng,
    limits=None,
    with_steps: bool = False,
) -> SampleOutput:
    """`generate` with a fixed number of slots (see the module docstring). tokens, mask [B, P]
    left-padded prompts; live [B] bool (False: a padding row, never sampled); limits: None or
    each request's response limit [B * n]. Returns the SampleOutput of R = B * n rows in request
    order, as `generate` does; with `with_steps`, also the decode steps each phase ran [phases]
    int32 (phase i has `phase_sizes(...)[i]` slots a group)."""
    n, N = sp.n, sp.max_new_tokens
    G = plan.groups
    tokens = jnp.repeat(tokens, n, axis=0)  # [R, P]
    mask = jnp.repeat(mask, n, axis=0).astype(jnp.int32)
    live = jnp.repeat(live, n, axis=0)
    R, P = tokens.shape
    if R % G:
        raise ValueError(f"{R} requests do not split over {G} slot groups")
    Rg = R // G
    limits = jnp.full((R,), N, jnp.int32) if limits is None else limits
    limits = limits.reshape(G, Rg)
    S = min(plan.per_group, Rg)  # slots per group: never more than its requests
    width = min(plan.width(), S)
    W = window(cfg, P + N)
    params = decode_weights(cfg, params)
    layer_params = split_layers(params)
    L, K, Dh, dt = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype)
    stops = jnp.asarray(sp.stop_tokens or (-1,), jnp.int32)
    # Keys cached [K, Dh, W] a slot, or [K, W, Dh] for the decode kernels (kernels.keys_major);
    # the prefill hands them over as [K, Dh, P].
    if kernels.keys_major(cfg):
        key_shape, key_axis, prefilled_keys = (K, W, Dh), 1, lambda x: jnp.swapaxes(x, -1, -2)
    else:
        key_shape, key_axis, prefilled_keys = (K, Dh, W), 2, lambda x: x

    by_group = lambda x: x.reshape(G, Rg, *x.shape[1:])
    queue_tokens, queue_mask = by_group(tokens), by_group(mask)  # [G, Rg, P]
    keys = by_group(jax.random.split(rng, R))  # [G, Rg]: split(rng, R)[r] does not depend on R
    # The queue: each group's live requests in order (the padding rows never enter a slot).
    order = jnp.argsort(~by_group(live), axis=1, stable=True)  # [G, Rg]
    waiting = by_group(live).sum(1).astype(jnp.int32)  # [G] requests not yet in a slot

    per_group = jax.vmap  # every function below acts on one group's arrays

    def record(state, req, t, token, logp, active):
        """Write each active row's token at (its request, step t) and the stops. req, t, token,
        logp, active [G, m]; inactive rows write nothing (an out-of-range row is dropped)."""
        hit = active & jnp.isin(token, stops)
        at = jnp.where(active, req, Rg)
        put = per_group(lambda x, i, j, y: x.at[i, j].set(y, mode="drop"))
        return dict(
            state,
            tokens=put(state["tokens"], at, t, token),
            mask=put(state["mask"], at, t, jnp.ones_like(token)),
            logprobs=put(state["logprobs"], at, t, logp),
            stop_reason=per_group(lambda x, i, y: x.at[i].set(y, mode="drop"))(
                state["stop_reason"], jnp.where(hit, req, Rg), jnp.full_like(req, STOP_EOS)
            ),
        ), hit | (t + 1 >= jnp.take_along_axis(limits, jnp.clip(req, 0, Rg - 1), 1))

    def draw(logits, req, t):
        """Sample each row's token at response step t from its request's key. [G, m] in."""
        key = jax.vmap(jax.random.fold_in)(
            jnp.take_along_axis(keys, jnp.clip(req, 0, Rg - 1), 1).reshape(-1), t.reshape(-1)
        )
        token, logp = sample_token(logits, key, sp)
        return token.reshape(req.shape), logp.reshape(req.shape)

    def open_groups(state):
        """[G] bool: the groups that take requests now: waiting requests, and `width` free slots
        or as many as there are requests left (without refilling, once every slot of the group
        is free). A refill prefills `width` rows whatever it writes, so it waits until it can
        write them all; a request's tokens do not depend on when it starts."""
        free = ~state["busy"]
        left = waiting - state["queued"]
        if plan.refill:
            ready = free.sum(1) >= jnp.minimum(width, left)
        else:
            ready = jnp.all(free, 1)
        return ready & (left > 0)

    def refill(state):
        """Give up to `width` free slots per open group the next waiting requests: prefill their
        prompts into those slots' cache rows and sample each one's first token."""
        free = ~state["busy"] & open_groups(state)[:, None]  # [G, S]
        # The first `width` free slots of each group, in slot order; rows past a group's free
        # slots or its waiting requests are not taken (valid False) and write nothing.
        slot = jnp.argsort(~free, axis=1, stable=True)[:, :width]  # [G, width]
        rank = jnp.arange(width)[None, :]
        valid = jnp.take_along_axis(free, slot, 1) & (
            state["queued"][:, None] + rank < waiting[:, None]
        )
        req = jnp.take_along_axis(order, jnp.minimum(state["queued"][:, None] + rank, Rg - 1), 1)
        take = lambda x: jnp.take_along_axis(x, req[:, :, None], 1).reshape(G * width, P)
        prompt, prompt_mask = take(queue_tokens), take(queue_mask)
        out, logits = prefill(cfg, params, prompt, prompt_mask)
        token, logp = draw(logits, req, jnp.zeros_like(req))
        state, finished = record(state, req, jnp.zeros_like(req), token, logp, valid)

        dest = jnp.where(valid, slot, S)  # invalid rows: out of range, dropped
        put = per_group(lambda x, i, y: x.at[i].set(y, mode="drop"))
        grouped = lambda x: x.reshape(G, width, *x.shape[1:])

        def write(buf, new, axis):
            """Prefilled rows into the slots' buffers [G*S, ...] at positions [0, P) of a slot's
            `axis` (keys [K, Dh, W]: 2, values [K, W, Dh]: 1)."""
            index = (slice(None),) * axis + (slice(0, P),)

            def put_rows(b, y, at):
                """One device group's slots b [S, ...], its prefilled rows y [width, ...], their
                slots at [1, width]."""
                return b.at[(at.reshape(-1), *index)].set(y, mode="drop")

            return on_own_rows(put_rows, buf, to_bits(new), dest)

        kv_row = jnp.concatenate([prompt_mask.astype(bool), jnp.zeros((G * width, W - P), bool)], 1)
        state = dict(
            state,
            k=[
                write(b, prefilled_keys(out.cache["k"][i]), key_axis)
                for i, b in enumerate(state["k"])
            ],
            v=[write(b, out.cache["v"][i], 1) for i, b in enumerate(state["v"])],
            kv_mask=put(state["kv_mask"], dest, grouped(kv_row)),
            req=put(state["req"], dest, req),
            t=put(state["t"], dest, jnp.ones_like(req)),
            busy=put(state["busy"], dest, ~finished),
            token=put(state["token"], dest, token),
            position=put(state["position"], dest, grouped(prompt_mask.sum(1))),
            queued=state["queued"] + valid.sum(1).astype(jnp.int32),
        )
        return _pin(state, K)

    def refill_all(state):
        return jax.lax.while_loop(lambda s: jnp.any(open_groups(s)), refill, state)

    def decode(state):
        """One token in every busy slot: feed its last token (response slot t - 1), sample the
        next (step t). Any number of slots per group (the shrinking phases have fewer)."""
        busy, t = state["busy"], state["t"]
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        write = P + t - 1  # [G, slots]: the cache position of the token fed
        fed = jax.nn.one_hot(write, W, dtype=jnp.bool_) & busy[:, :, None]
        kv_mask = state["kv_mask"] | fed
        caches = [RowCache(k, v, flat(write)) for k, v in zip(state["k"], state["v"])]
        out = decode_unrolled(
            cfg,
            params,
            layer_params,
            caches,
            flat(state["token"])[:, None],
            flat(state["position"])[:, None],
            flat(kv_mask),
            W - 1,  # every slot is causally visible; the kv_mask says which hold this request
        )
        token, logp = draw(out.logits[:, 0], state["req"], t)
        state, finished = record(state, state["req"], t, token, logp, busy)
        state = dict(
            state,
            k=[c.k for c in out.cache],
            v=[c.v for c in out.cache],
            kv_mask=kv_mask,
            busy=busy & ~finished,
            t=t + 1,
            token=token,
            position=state["position"] + 1,
        )
        return _pin(state, K)

    def keep_decoding(size: int, last: bool):
        """The loop condition of the phase with `size` slots a group: a busy slot, and (unless
        it is the last phase) a waiting request or more busy slots in some group than the next
        phase's size."""

        def cond(state):
            busy = jnp.any(state["busy"])
            if last:
                return busy
            waiting_any = jnp.any(state["queued"] < waiting)
            return busy & (waiting_any | (jnp.max(state["busy"].sum(1)) > size // 2))

        return cond

    def shrink(state, size: int):
        """Keep `size` slots a group, the busy ones first (all of them: the loop before left at
        most `size` busy), with their cache rows; the requests' outputs are untouched."""
        keep = jnp.argsort(~state["busy"], axis=1, stable=True)[:, :size]  # [G, size]

        take = jax.vmap(lambda b, i: b[i])  # [g, slots, ...], [g, size] -> [g, size, ...]

        def rows(buf, _, at):
            """One device's groups: buf [g * slots, ...] -> [g * size, ...]."""
            grouped = buf.reshape(at.shape[0], -1, *buf.shape[1:])
            return take(grouped, at).reshape(-1, *buf.shape[1:])

        small = {
            k: take(state[k], keep) for k in ("kv_mask", "req", "t", "busy", "token", "position")
        }
        cache = {k: [on_own_rows(rows, b, b, keep) for b in state[k]] for k in ("k", "v")}
        return _pin(state | small | cache, K)

    zeros = lambda shape, dtype=jnp.int32: jnp.zeros(shape, dtype)
    sizes = phase_sizes(S, plan.shrink)
    state = _pin(
        dict(
            # The cache as bits (attention.to_bits): rows are written by scatters.
            k=[to_bits(zeros((G * S, *key_shape), dt)) for _ in range(L)],
            v=[to_bits(zeros((G * S, K, W, Dh), dt)) for _ in range(L)],
            kv_mask=zeros((G, S, W), jnp.bool_),
            req=zeros((G, S)),
            t=zeros((G, S)),
            busy=zeros((G, S), jnp.bool_),
            token=zeros((G, S)),
            position=zeros((G, S)),
            queued=zeros((G,)),
            tokens=jnp.full((G, Rg, N), sp.pad_id, jnp.int32),
            mask=zeros((G, Rg, N)),
            logprobs=zeros((G, Rg, N), jnp.float32),
            stop_reason=jnp.full((G, Rg), STOP_LENGTH, jnp.int32),
            phase_steps=zeros((G, len(sizes))),  # the same in every group: they step together
        ),
        K,
    )
    # Decode with refills while requests wait; then, as the last requests finish, in phases of
    # half as many slots (plan.shrink of them), each entered once no group has more busy slots
    # than it holds: the tail of long requests is not decoded at the full slot count.
    state = refill_all(state)
    for i, size in enumerate(sizes):
        last = i == len(sizes) - 1
        if i:
            state = shrink(state, size)
        step = lambda s, i=i: decode(s) | {"phase_steps": s["phase_steps"].at[:, i].add(1)}
        body = (lambda s, step=step: refill_all(step(s))) if i == 0 else step
        state = jax.lax.while_loop(keep_decoding(size, last), body, state)
    flat = lambda x: x.reshape(R, *x.shape[2:])
    out = SampleOutput(
        tokens,
        mask,
        flat(state["tokens"]),
        flat(state["mask"]),
        flat(state["logprobs"]),
        flat(state["stop_reason"]),
    )
    return (out, state["phase_steps"][0]) if with_steps else out
