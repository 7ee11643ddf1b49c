"""The learner engine SFT and GRPO share: a checkpoint under DeepSpeed, built in one place.

One DeepSpeed config, the CPU accelerator chosen in one place, ZeRO-3 parameters created sharded
(transformers' `HfDeepSpeedConfig` makes `from_pretrained` partition each parameter as it loads, so no
rank holds the whole model), DeepSpeed state save/resume, and the HF export (ZeRO-3: gathered one
parameter at a time). The caller's process group must exist before the engine is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch


def select_accelerator(use_gpu: bool) -> None:
    """DeepSpeed picks its accelerator at import: CPU runs must say so first."""
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def deepspeed_config(zero_stage: int, micro_steps: int, world: int, max_grad_norm: float, bf16: bool) -> dict:
    """Micro-batches of one packed row; `micro_steps` of them per optimizer step on each of `world` ranks."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": micro_steps,
        "train_batch_size": micro_steps * world,
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": max_grad_norm,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "zero_allow_untested_optimizer": True,
    }


class LearnerEngine:
    """`model` (trainable parts by prefix, per-sample attention for packed rows) and, after `start`, its
    DeepSpeed `engine`."""

    def __init__(
        self,
        checkpoint: str,
        trainable_prefixes: list[str],
        *,
        zero_stage: int,
        use_gpu: bool,
        dtype: str,
        device: str,
        world: int,
        micro_steps: int = 1,
        max_grad_norm: float = 1.0,
    ):
        select_accelerator(use_gpu)
        from r1v_ray.model.freeze import set_trainable
        from r1v_ray.model.varlen import use_varlen_attention

        self.checkpoint, self.zero_stage, self.device = checkpoint, zero_stage, device
        self.config = deepspeed_config(zero_stage, micro_steps, world, max_grad_norm, use_gpu and dtype == "bfloat16")
        self.model, self.processor = self._load(checkpoint, dtype, device)
        set_trainable(self.model, trainable_prefixes)
        use_varlen_attention(self.model)  # packed rows: attention per sample
        self.model.train()
        self.engine = None

    def _load(self, checkpoint: str, dtype: str, device: str):
        from r1v_ray.model.assemble import load_checkpoint

        if self.zero_stage != 3:
            return load_checkpoint(checkpoint, dtype=dtype, device=device)
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        # zero.Init checks the batch layout against the world size: DeepSpeed must see the caller's group.
        deepspeed.init_distributed(dist_backend="nccl" if self.device.startswith("cuda") else "gloo")
        # While this object lives, from_pretrained builds under deepspeed.zero.Init: each parameter is
        # partitioned over the ranks as it is created and loaded.
        self._zero3 = HfDeepSpeedConfig(self.config)
        return load_checkpoint(checkpoint, dtype=dtype, device=None)

    def start(self, optimizer: torch.optim.Optimizer, scheduler=None) -> None:
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config
        )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_state(self, path: str) -> None:
        """DeepSpeed's state (weights, optimizer, scheduler) under path/ds, for resuming."""
        self.engine.save_checkpoint(os.path.join(path, "ds"), tag="state")

    def load_state(self, path: str) -> None:
        self.engine.load_checkpoint(os.path.join(path, "ds"), tag="state")  # our own files, written by save_state

    def gathered(self, only_trainable: bool, rank: int) -> Iterator[tuple[str, torch.Tensor | None]]:
        """(name, full tensor) of each parameter on rank 0, (name, None) elsewhere. Every rank must iterate:
        under ZeRO-3 each parameter is gathered collectively, one at a time (never the whole model)."""
        import deepspeed

        for name, param in self.engine.module.named_parameters():
            if only_trainable and not param.requires_grad:
                continue
            with deepspeed.zero.GatheredParameters([param], enabled=self.zero_stage == 3):
                yield name, (param.detach() if rank == 0 else None)

    def export_hf(self, path: str, rank: int, meta: dict) -> None:
        """Rank 0 writes a standard HF checkpoint (every rank takes part in the ZeRO-3 gathers)."""
        from r1v_ray.model.assemble import save_checkpoint

        if self.zero_stage != 3:
            if rank == 0:
                save_checkpoint(self.engine.module, self.processor, path, meta=meta)
            return
        state = {name: tensor.cpu().clone() for name, tensor in self.gathered(False, rank) if tensor is not None}
        if rank == 0:
            os.makedirs(path, exist_ok=True)
            self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(path)
            with open(os.path.join(path, "r1v_meta.json"), "w") as f:
                json.dump(meta, f, indent=2)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 partitions keep the full shape aside
            (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
