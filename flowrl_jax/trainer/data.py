"""The order prompts are drawn in: a seeded permutation of the dataset per epoch, so a single integer
(prompts drawn so far) is the iterator's whole state, saved with each checkpoint."""

from __future__ import annotations

import jax
import numpy as np


class PromptOrder:
    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size < 1:
            raise ValueError("the task has no prompts")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.position = 0  # prompts drawn so far, over all epochs
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            self._epoch, self._perm = epoch, perm
        return self._perm

    def take(self, k: int) -> list[int]:
        """The next k dataset indices (wrapping into the next epoch)."""
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.size)
            out.append(int(self._order(epoch)[i]))
            self.position += 1
        return out

    def state(self) -> dict:
        return {"position": self.position, "size": self.size, "seed": self.seed}

    def restore(self, state: dict) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(
                f"the checkpoint's data order (size {state['size']}, seed {state['seed']}) is not "
                f"this run's (size {self.size}, seed {self.seed}): the dataset or seed changed"
            )
        self.position = int(state["position"])


def shard_rows(rows: list, index: int, count: int) -> list:
    """Shard `index` of `count`: rows i with i % count == index. Shards are disjoint, cover every
    row, and differ in size by at most one."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    return rows[index::count]


def shard_count(setting: int, processes: int) -> int:
    """task.data_shards: 1 (every process encodes and draws every row, on any number of
    processes), S > 1, or -1 (one shard per process). With S > 1, process p owns shards s with
    s % processes == p, so S must be a multiple of the process count."""
    shards = processes if setting == -1 else setting
    if shards < 1 or (shards > 1 and shards % processes):
        raise ValueError(
            f"task.data_shards={setting} gives {shards} shards for {processes} processes: it must be "
            "1, -1 (one per process) or a positive multiple of the process count"
        )
    return shards


class PromptSource:
    """The prompts of a run, encoded once, drawn in a resumable order.

    With S data shards the rows are split S ways (`shard_rows`) and each step's batch is the
    concatenation, in shard order, of prompts_per_step / S draws from each shard's own seeded
    order. A process encodes and draws only its own shards; the token ids of the others' draws
    come by an allgather. So the batches depend on S, not on the process count: one process with
    S = 2 draws exactly what two processes with one shard each draw.
    """

    def __init__(self, task, tokenizer, max_prompt_len, system_prompt, seed, shuffle, shards=1):
        from flowrl_jax.tasks.prompts import encode_prompts

        self.index, self.count = jax.process_index(), jax.process_count()
        self.shards = shards
        # One shard is every process's: each encodes and draws every row, in the same order, and
        # nothing needs gathering.
        self.mine = (
            [0] if shards == 1 else [s for s in range(shards) if s % self.count == self.index]
        )
        everything = list(range(len(task.prompts)))
        self.encoded, self.orders = {}, {}
        for s in self.mine:
            rows = everything if shards == 1 else shard_rows(everything, s, shards)
            self.encoded[s] = encode_prompts(task, tokenizer, max_prompt_len, system_prompt, rows)
            # Shard 0 keeps the run's seed: one shard is exactly the unsharded order.
            self.orders[s] = PromptOrder(len(self.encoded[s].ids), seed + 1_000_003 * s, shuffle)

    def take(self, k: int) -> tuple[list[np.ndarray], list[int]]:
        """The next k prompts (token ids) and their task rows, the same on every process."""
        if k % self.shards:
            raise ValueError(f"{k} prompts per step do not split over {self.shards} data shards")
        drawn = {}
        for s in self.mine:
            picks = self.orders[s].take(k // self.shards)
            enc = self.encoded[s]
            drawn[s] = ([enc.ids[i] for i in picks], [enc.rows[i] for i in picks])
        if self.count > 1 and self.shards > 1:
            drawn = self._gather(drawn, k // self.shards)
        ids = [x for s in range(self.shards) for x in drawn[s][0]]
        rows = [r for s in range(self.shards) for r in drawn[s][1]]
        return ids, rows

    def _gather(self, drawn: dict, per_shard: int) -> dict:
        from jax.experimental import multihost_utils as mh

        local = [x for s in self.mine for x in drawn[s][0]]
        width = int(np.max(mh.process_allgather(np.int32(max(len(x) for x in local)))))
        ids = np.zeros((len(local), width), np.int32)
        for i, x in enumerate(local):
            ids[i, : len(x)] = x
        lengths = np.asarray([len(x) for x in local], np.int32)
        rows = np.asarray([r for s in self.mine for r in drawn[s][1]], np.int64)
        ids, lengths, rows = (np.asarray(a) for a in mh.process_allgather((ids, lengths, rows)))
        out = {}
        for p in range(self.count):  # process p's j-th shard is p + j * count
            for j, s in enumerate(range(p, self.shards, self.count)):
                part = slice(j * per_shard, (j + 1) * per_shard)
                out[s] = (
                    [ids[p, i, : lengths[p, i]] for i in range(part.start, part.stop)],
                    rows[p, part].tolist(),
                )
        return out

    def state(self) -> dict:
        """What a checkpoint saves: one order's state (one shard, the original format) or every
        shard's (gathered from their processes)."""
        if self.shards == 1:
            return self.orders[0].state()
        mine = {s: self.orders[s].state() for s in self.mine}
        if self.count > 1:
            from jax.experimental import multihost_utils as mh

            fields = ("position", "size", "seed")
            local = np.asarray([[mine[s][f] for f in fields] for s in self.mine], np.int64)
            every = np.asarray(mh.process_allgather(local))
            mine = {
                s: dict(zip(fields, map(int, every[p, j])))
                for p in range(self.count)
                for j, s in enumerate(range(p, self.shards, self.count))
            }
        return {"shards": [mine[s] for s in range(self.shards)]}

    def restore(self, state: dict) -> None:
        saved = state.get("shards", [state])
        if len(saved) != self.shards:
            raise ValueError(
                f"the checkpoint's data order has {len(saved)} shard(s), this run "
                f"task.data_shards gives {self.shards}: the shard count must stay the same"
            )
        for s in self.mine:
            self.orders[s].restore(saved[s])
