"""Packing: the sequences of a batch laid end to end in rows of a fixed token budget, so scoring and
the update pay for real tokens instead of padding to the longest row.

A batch arrives as [B, S] rows, prompt left-padded to P, response right-padded (S = P + N). Each
sequence's real tokens (a contiguous run) are copied into a packed row at an offset, with its own
segment id (attention stays inside a segment: decoder `segments`) and its own positions from 0, so
its hidden states equal those of its own row. Rows are filled first-fit, longest sequence first,
and grouped `rows` at a time into micro-batches: every micro-batch then holds about the same
number of tokens, and a batch of short responses runs fewer micro-batches (`Packed.used`, known
when the program runs; trainer/micro.loop skips the rest).

Everything here is traced: the same packing runs in the phased update and inside the fused step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Layout(NamedTuple):
    """The static shape of a packed batch: `micro_batches` x `rows` x `row_len` tokens."""

    row_len: int  # T: tokens per packed row, at least the longest sequence (P + N)
    rows: int  # packed rows per micro-batch
    micro_batches: int  # M: enough that the worst case (one sequence per row) fits

    @classmethod
    def for_batch(cls, sequences: int, row_len: int, rows: int) -> Layout:
        return cls(row_len, rows, -(-sequences // rows))

    @property
    def size(self) -> int:
        """Token slots of the whole layout (a flat index past the last is 'nowhere')."""
        return self.micro_batches * self.rows * self.row_len


class Packed(NamedTuple):
    tokens: jax.Array  # [M, rows, T] int32, 0 on padding
    positions: jax.Array  # [M, rows, T] int32: each sequence's own positions from 0
    segments: jax.Array  # [M, rows, T] int32: sequence index + 1, 0 on padding
    pooled: jax.Array  # [M, rows, T] int32: whose prompt the log-Z head pools here, else B
    index: jax.Array  # [B, S] int32: each real token's flat slot in the layout, `size` elsewhere
    micro: jax.Array  # [B] int32: the micro-batch holding each sequence
    used: jax.Array  # int32: micro-batches holding at least one sequence


def _first_fit(lengths, row_len: int, slots: int):
    """Longest first, each sequence into the first row with room -> (row [B], offset [B])."""
    order = jnp.argsort(-lengths, stable=True)

    def place(fill, i):
        n = lengths[i]
        row = jnp.argmax(fill + n <= row_len)  # there is always one: n <= row_len, slots >= B
        return fill.at[row].add(n), (row, fill[row])

    _, (row, offset) = jax.lax.scan(place, jnp.zeros(slots, jnp.int32), order)
    B = lengths.shape[0]
    back = lambda x: jnp.zeros(B, jnp.int32).at[order].set(x)
    return back(row), back(offset)


def pack(tokens, mask, layout: Layout, prompt_len: int, drop_last_prompt: bool = False) -> Packed:
    """tokens, mask [B, S] (prompt left-padded to prompt_len, response right-padded) -> Packed.
    drop_last_prompt: the log-Z head's pooling leaves out each prompt's last token (heads.pool_prompt)."""
    B, S = tokens.shape
    T, rows = layout.row_len, layout.rows
    if S > T:  # a sequence could be longer than a row: refused while tracing, before compiling
        raise ValueError(
            f"a packed row of train.pack_length={T} tokens cannot hold this batch's longest "
            f"possible sequence, {S} tokens (its prompt bucket of {prompt_len} and "
            f"{S - prompt_len} response tokens); raise train.pack_length to at least {S}"
        )
    mask = mask.astype(bool)
    lengths = mask.sum(1, dtype=jnp.int32)
    row, offset = _first_fit(lengths, T, layout.micro_batches * rows)
    rank = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1  # a real token's place in its sequence
    nowhere = layout.size
    index = jnp.where(mask, (row * T + offset)[:, None] + rank, nowhere)

    def scatter(values, fill, where=index):
        flat = jnp.full((nowhere,), fill, jnp.int32).at[where.reshape(-1)]
        return flat.set(values.reshape(-1), mode="drop").reshape(-1, rows, T)

    seq = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, S))
    prompt = jnp.arange(S) < (prompt_len - 1 if drop_last_prompt else prompt_len)
    used_rows = jnp.max(jnp.where(lengths > 0, row + 1, 0))
    return Packed(
        tokens=scatter(tokens.astype(jnp.int32), 0),
        positions=scatter(rank, 0),
        segments=scatter(seq + 1, 0),
        pooled=scatter(seq, B, jnp.where(prompt[None, :], index, nowhere)),
        index=index,
        micro=row // rows,
        used=-(-used_rows // rows),
    )


def unpack(values, index, first: int = 0):
    """Per-slot values of a packed layout (any leading shape over the slots, flattened in order)
    -> [B, S - first] in the unpacked layout, columns first.. of `index`; 0 where no slot maps."""
    flat = values.reshape(-1)
    return jnp.take(flat, index[:, first:], mode="fill", fill_value=0)


def unpack_micro(values, packed: Packed, j, first: int = 0):
    """`unpack` for micro-batch j's own rows ([rows, T]): values of sequences in other
    micro-batches are 0."""
    size = values.size
    local = packed.index[:, first:] - j * size
    mine = (packed.micro == j)[:, None] & (packed.index[:, first:] < packed.tokens.size)
    return jnp.take(values.reshape(-1), jnp.where(mine, local, size), mode="fill", fill_value=0)


def pool(hidden, pooled, sequences: int):
    """The mean over each sequence's pooled prompt tokens of hidden [rows, T, D] (float32), from
    one micro-batch's rows -> [sequences, D]; 0 for a sequence with no token here."""
    ids = pooled.reshape(-1)
    h = hidden.reshape(ids.shape[0], -1).astype(jnp.float32)
    total = jax.ops.segment_sum(h, ids, sequences + 1)[:sequences]
    count = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, sequences + 1)[:sequences]
    return total / jnp.maximum(count, 1.0)[:, None]
