"""R1V2's Selective Sample Buffer: samples with a large |advantage| are kept, and replayed into steps whose
groups had no reward variance (the "vanishing advantages" of a batch the policy has mostly solved or failed).

The choices are the pure functions `ssb_keep`, `ssb_replay` and `ssb_evict` (r1v_ray.grpo.algorithms); this
class only holds the trajectories between steps. A sample is replayed once, with the advantage and the
rollout log-probs it was sampled with (the clipped ratio, and `grpo.tis_cap` where set, correct for its
age). Only `RolloutCollector.collect` touches it, and one collect runs at a time (the prefetched one is
waited for before the next starts). The buffer is a cache: a resumed run starts with it empty.
"""

from __future__ import annotations

import torch

from r1v_ray.grpo.algorithms import ssb_evict, ssb_keep, ssb_replay
from r1v_ray.grpo.batch import Trajectory


class SelectiveSampleBuffer:
    def __init__(self, capacity: int, min_abs_advantage: float):
        if capacity < 0:
            raise ValueError(f"grpo.ssb_capacity={capacity}: must be >= 0 (0 turns the buffer off)")
        self.capacity, self.min_abs_advantage = capacity, min_abs_advantage
        self.items: list[Trajectory] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, trajectories: list[Trajectory]) -> None:
        """Keep those of a step's trajectories with |A| >= the threshold; over capacity, the largest |A| stay."""
        if not trajectories or not self.capacity:
            return
        keep = ssb_keep(torch.tensor([t.advantage for t in trajectories]), self.min_abs_advantage)
        self.items += [t for t, k in zip(trajectories, keep.tolist()) if k]
        kept = ssb_evict(torch.tensor([t.advantage for t in self.items]), self.capacity)
        self.items = [self.items[i] for i in kept.tolist()]

    def replay(self, need: int) -> list[Trajectory]:
        """Up to `need` buffered samples, largest |A| first; they leave the buffer."""
        if not self.items or need <= 0:
            return []
        take, stay = ssb_replay(torch.tensor([t.advantage for t in self.items]), need)
        out = [self.items[i] for i in take.tolist()]
        self.items = [self.items[i] for i in stay.tolist()]
        return out


def fill_step(buffer: SelectiveSampleBuffer, fresh: list[Trajectory], batch_size: int) -> list[Trajectory]:
    """A step's batch: its own trajectories, then buffered ones from earlier steps in the slots zero-variance
    groups left empty (up to `batch_size`); afterwards the step's own are offered to the buffer, so that a
    step never replays itself."""
    replayed = buffer.replay(batch_size - len(fresh))
    buffer.add(fresh)
    return fresh + replayed
