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
