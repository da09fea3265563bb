"""The order prompts are drawn in: a seeded permutation of the dataset per epoch, so a single integer
(prompts drawn so far) is the iterator's whole state, saved with each checkpoint."""

from __future__ import annotations

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
    """Process `index` of `count`'s share of the dataset rows: rows i with i % count == index.
    Shares are disjoint, cover every row, and differ in size by at most one.

    Not used yet, on purpose: today every process loads every row and draws the same global batch
    (trainer/run.py next_prompts), the sampler places each process's slice of that host array
    (mesh.to_device), and Trainer.rewards scores any row on any process, so each host needs all
    rows. That costs little: 100k prompts of 500 tokens are 200 MB of int32 token ids. For per-host shards the loop would need, in this order:
      1. run.py: encode only shard_rows(task rows, process_index, process_count), and a PromptOrder
         per host over its share (seed folded with the process index, so hosts draw different rows;
         the checkpoint then saves one position per host, or a position every host shares when the
         shares have equal sizes: drop the remainder row so they do);
      2. next_prompts draws prompts_per_step / process_count local prompts, and the global batch is
         built with jax.make_array_from_process_local_data instead of mesh.to_device (prompt length
         padded to a bucket every host agrees on: an allgather of the local longest);
      3. Trainer.rewards scores the rows of its own process's prompts (their token ids and answers
         are only there) and allgathers the rewards, as it already does for its share of rows.
    """
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    return rows[index::count]
