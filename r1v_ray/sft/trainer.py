"""The SFT job: what one Ray Train run needs (`SFTJob`: its own values plus the `sft` config), its schedule and RNG state (the worker's loop is
`sft.recipe`), DeepSpeed as the engine on CPU and GPU alike.

Data order is a pure function of (seed, epoch), so a step's samples are known
to every worker without communication, and resuming from a checkpoint restarts
at the exact next step: no sample is lost or repeated. Each worker reads only
its own rows of each step (`sft.data.WorkerShard`), never the whole dataset.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from r1v_ray.config import SFTConfig, from_dict
from r1v_ray.sft.data import StepLayout

SEEN_FILE = "samples_seen.jsonl"  # one record per optimizer step: the sample ids it consumed
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"  # one record each time a failed run resumed from a checkpoint


@dataclass
class SFTJob:
    """One training run: what differs between the runs of a stage (what it starts from and trains on, where
    it writes, its learning rate, epochs, dtype and trainable parts), and the `sft` config section for the
    rest (batch sizes, schedule, ZeRO stage, workers, clipping, seed, max_failures). The run's `epochs` and
    `trainable_prefixes` win over `sft.epochs` and `sft.trainable_prefixes`, which the stages resolve into
    them. Dataclasses of plain values, so it travels to Ray workers as a dict (`job_to_dict`)."""

    init_checkpoint: str
    data_uri: str
    output_dir: str
    learning_rate: float
    sft: SFTConfig = field(default_factory=SFTConfig)
    stage: str = "sft"
    epochs: int = 1
    dtype: str = "float32"
    trainable_prefixes: list[str] = field(default_factory=lambda: ["projector"])

    def step_layout(self) -> StepLayout:
        return StepLayout(self.sft.global_batch_size, self.sft.micro_batch_size, self.sft.num_workers)


def lr_lambda(total_steps: int, warmup_ratio: float, kind: str):
    """Linear warm-up over warmup_ratio of the steps, then cosine (or linear, or constant) decay."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)

    return factor


def save_rng(path: str) -> None:
    state = {
        "python": list(random.getstate()[1]),
        "numpy": np.random.get_state()[1].tolist(),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_initialized():  # GPU runs: dropout and sampling draw from the device's generator
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    with open(path, "w") as f:
        json.dump(state, f)


def load_rng(path: str) -> None:
    with open(path) as f:
        state = json.load(f)
    random.setstate((3, tuple(state["python"]), None))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def job_to_dict(job: SFTJob) -> dict:
    return asdict(job)


def job_from_dict(values: dict) -> SFTJob:
    """The job again from `job_to_dict`'s dict (what a Ray Train worker receives)."""
    return SFTJob(**{**values, "sft": from_dict(SFTConfig, values["sft"], prefix="sft")})
