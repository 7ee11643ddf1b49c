"""The learner engine SFT and GRPO share: a checkpoint under DeepSpeed, built in one place.

One DeepSpeed config, the CPU accelerator chosen in one place, ZeRO-3 parameters created sharded (the
model is built under `deepspeed.zero.Init`, and each rank reads only its own slice of each weight from the
safetensors files, so no rank ever holds the whole model; `from_pretrained` under `HfDeepSpeedConfig` would
read every tensor on every rank), DeepSpeed state save/resume, and the HF export (streamed into safetensors
shards on rank 0; ZeRO-3: gathered one parameter at a time). The caller's process group must exist first.
"""

from __future__ import annotations

import contextlib
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
    """`model` (trainable parts by prefix, the packed-row attention) and, after `start`, its
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
        # bf16 on CPU only when asked for (CPU recipes train in float32); ZeRO-3 builds parameters in this dtype
        self.config = deepspeed_config(zero_stage, micro_steps, world, max_grad_norm, dtype == "bfloat16")
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
        # While this object lives transformers knows ZeRO-3 is on (resizing, generation gather as needed).
        self._zero3 = HfDeepSpeedConfig(self.config)
        return load_zero3(checkpoint, dtype, self.config)

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

    def export_hf(self, path: str, rank: int, meta: dict, max_shard_bytes: int | None = None) -> None:
        """Rank 0 streams a standard HF checkpoint into safetensors shards, one tensor at a time; under
        ZeRO-3 every rank takes part in each parameter's gather (the whole model is never gathered)."""
        from r1v_ray.model.assemble import saved_keys, streamed_checkpoint
        from r1v_ray.model.safetensors_io import DEFAULT_SHARD_BYTES

        if self.zero_stage != 3 and rank != 0:
            return
        import deepspeed

        module = self.engine.module
        state = module.state_dict(keep_vars=True)
        specs = {n: (t.dtype, tuple(getattr(t, "ds_shape", t.shape))) for n, t in state.items()}
        params = {id(p) for p in module.parameters()}
        writing = (
            streamed_checkpoint(module, specs, self.processor, path, meta, max_shard_bytes or DEFAULT_SHARD_BYTES)
            if rank == 0
            else contextlib.nullcontext(None)
        )
        with writing as write:
            for name in saved_keys(module):  # the same order on every rank: each gather is collective
                tensor = state[name]
                with deepspeed.zero.GatheredParameters([tensor], enabled=self.zero_stage == 3 and id(tensor) in params):
                    if write is not None:
                        write(name, tensor.detach())


def _partitioning_init(ds_config: dict):
    """`deepspeed.zero.Init` that only partitions, into partitions the checkpoint fills afterwards.

    The stock one broadcasts each new parameter from rank 0 so random inits agree, which writes the whole
    tensor on every other rank, then copies the rank's slice of it into the partition. Here every element of
    every partition is read from the checkpoint right after (a tensor missing there is an error), so neither
    happens: the partition is allocated as DeepSpeed's `_partition_param` allocates it but left unwritten,
    so its pages become resident only as its weights are read (a tied head's partition, dropped before
    loading, never does), and the full-size tensors are never touched and are freed once partitioned."""
    import deepspeed
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
    from deepspeed.runtime.zero.partition_parameters import PartitionedParamStatus

    class PartitioningInit(deepspeed.zero.Init):
        def _zero_init_param(self, param):
            self._convert_to_deepspeed_param(param)
            if not (
                self.pin_memory or self.quantized_nontrainable_weights or self.remote_device == OffloadDeviceEnum.nvme
            ):
                # deepspeed==0.19.8 `_partition_param`'s first-partition branch, less its copy; with
                # `ds_tensor` set, `partition()` only frees the full-size data
                size = self._aligned_size(param) // self._partition_world_size(param)
                device = self.local_device if param.ds_persist else self.remote_device
                part = torch.empty(size, dtype=param.dtype, device=device)
                part.requires_grad = False
                part.ds_numel, part.status, part.final_location = size, PartitionedParamStatus.AVAILABLE, None
                param.ds_tensor, param.ds_numel_aligned = part, self._aligned_size(param)
            param.partition()

    return PartitioningInit(config_dict_or_path=ds_config)


def _return_freed_memory_promptly() -> None:
    """glibc serves blocks below its (self-raising, up to 32 MB) mmap threshold from a heap that keeps freed
    pages resident; with a fixed 1 MB threshold each full-size layer tensor built, partitioned and freed
    goes back to the OS at once (measured at 1.86B: -0.6 GB per rank peak while parameters were still
    gathered during the build; since then -0.05 GB, in deepspeed.initialize). No-op where mallopt is absent."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_zero3(checkpoint: str, dtype: str, ds_config: dict):
    """(model, processor): the model built under `deepspeed.zero.Init`, each parameter partitioned as it is
    created, then each rank copies its own flat slice of every weight from the checkpoint's safetensors
    into its partition (`ds_tensor`, laid out as DeepSpeed's `_partition_param` lays it out)."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.initialization import no_init_weights
    from transformers.modeling_utils import local_torch_dtype, set_zero3_state

    from r1v_ray.model.assemble import DTYPES, part_refs
    from r1v_ray.model.safetensors_io import load_flat_range, load_tensor

    config = AutoConfig.from_pretrained(checkpoint)
    model_cls = AutoModelForImageTextToText._model_mapping[type(config)]
    # zero.Init takes the parameters' dtype from the config's bf16/fp16 flags (its `dtype` argument is
    # overridden on accelerators without fp16): the config must say what `dtype` says.
    precision = "bfloat16" if ds_config["bf16"]["enabled"] else "float32"
    if dtype != precision:
        raise ValueError(f"ZeRO-3 builds {precision} parameters (DeepSpeed bf16.enabled), not model.dtype={dtype!r}")
    # Parameters are born in `dtype` (no float32 copy to convert) and partitioned module by module as each
    # is built; no random init: the weights come from the checkpoint. `set_zero3_state` tells the sub-models'
    # `from_config` (InternVL builds its vision tower and LLM that way) that zero.Init is already on;
    # otherwise each nests the stock zero.Init and then runs `initialize_weights_zero3`, which gathers every
    # module's full parameters on each rank (measured at 1.86B: +0.9 GB peak per rank, the embedding) to
    # random-init them on rank 0 and broadcast, only for the checkpoint to overwrite them.
    _return_freed_memory_promptly()
    with local_torch_dtype(DTYPES[dtype]), no_init_weights(), _partitioning_init(ds_config), set_zero3_state():
        model = model_cls(config)
    model.tie_weights()  # now, so a tied head's own partition is dropped before the weights are read
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with torch.no_grad():
        for name, ref in part_refs(checkpoint, model).items():
            if name not in params:
                buffers[name].copy_(load_tensor(ref, buffers[name].dtype))  # buffers are not partitioned
                continue
            param = params[name]
            if tuple(param.ds_shape) != ref.shape:
                raise ValueError(
                    f"{checkpoint}: {ref.key} has shape {ref.shape}, the model needs {tuple(param.ds_shape)}"
                )
            size = param.ds_tensor.ds_numel
            start = size * dist.get_rank(group=param.ds_process_group)
            end = min(start + size, param.ds_numel)
            if start < end:
                param.ds_tensor.narrow(0, 0, end - start).copy_(load_flat_range(ref, start, end, param.dtype))
    return model.eval(), AutoProcessor.from_pretrained(checkpoint)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 partitions keep the full shape aside
            (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
