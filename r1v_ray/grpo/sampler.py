"""The GRPO prompt sampler: which rows each step draws, reproducible from a saved position."""

from __future__ import annotations

import numpy as np


class PromptSampler:
    """Epoch-wise permutations by seed: the position (epoch, index) and the solved rows fully determine what
    comes next.

    A draw never holds a row twice: when it runs into the next epoch, rows it took at the end of the last
    one are passed over there (they were just seen), so no two groups of a step share a prompt. Rows marked
    solved (`grpo.skip_solved_prompts`: every sample of their group was right) are passed over too, unless
    fewer than a draw's worth of rows are left unsolved.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0, solved: list[int] | None = None):
        if n <= 0:
            raise ValueError("the GRPO prompt set is empty: nothing to sample")
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self.solved: set[int] = set(solved or ())
        self._order: tuple[int, np.ndarray] | None = None

    def _permutation(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self.n))
        return self._order[1]

    def take(self, k: int) -> list[int]:
        if k > self.n:
            raise ValueError(f"cannot draw {k} distinct prompts from {self.n} rows")
        skip = self.solved if self.n - len(self.solved) >= k else set()
        out: list[int] = []
        while len(out) < k:
            i = int(self._permutation()[self.index])
            if i not in out and i not in skip:
                out.append(i)
            self.index += 1
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def mark_solved(self, rows: list[int]) -> None:
        self.solved.update(rows)

    def state(self) -> dict:
        """The position, and the solved rows when there are any (a checkpoint's `sampler`)."""
        out: dict = {"epoch": self.epoch, "index": self.index}
        if self.solved:
            out["solved"] = sorted(self.solved)
        return out
