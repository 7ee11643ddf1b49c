"""The SFT trainer: Ray Train `TorchTrainer` workers, DeepSpeed as the engine on CPU and GPU alike.

Data order is a pure function of (seed, epoch), so a step's samples are known
to every worker without communication, and resuming from a checkpoint restarts
at the exact next step: no sample is lost or repeated. Each worker reads only
its own rows of each step (`sft.data.WorkerShard`), never the whole dataset.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from r1v_ray.sft.data import StepLayout, WorkerShard, interleave_ranks

SEEN_FILE = "samples_seen.jsonl"  # one record per optimizer step: the sample ids it consumed
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"  # one record each time a failed run resumed from a checkpoint


@dataclass
class SFTJob:
    """Everything a training run needs; plain values so it travels to Ray workers."""

    init_checkpoint: str
    data_uri: str
    output_dir: str
    learning_rate: float
    stage: str = "sft"
    epochs: int = 1
    global_batch_size: int = 512
    micro_batch_size: int = 1
    max_length: int = 16384
    weight_decay: float = 0.05
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    zero_stage: int = 2
    num_workers: int = 2
    use_gpu: bool = False
    dtype: str = "float32"
    trainable_prefixes: list[str] = field(default_factory=lambda: ["projector"])
    checkpoint_every_steps: int = 100
    log_every_steps: int = 10
    max_grad_norm: float = 1.0
    node_resource: str | None = None
    seed: int = 0

    def step_layout(self) -> StepLayout:
        return StepLayout(self.global_batch_size, self.micro_batch_size, self.num_workers)


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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def export_hf(engine, processor, path: str, zero_stage: int, rank: int, meta: dict) -> None:
    """Rank 0 writes a standard HF checkpoint; under ZeRO-3 parameters are gathered one at a time."""
    from r1v_ray.model.assemble import save_checkpoint

    model = engine.module
    if zero_stage == 3:
        import deepspeed

        state = {}
        for name, param in model.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.detach().cpu().clone()
        if rank == 0:
            os.makedirs(path, exist_ok=True)
            model.save_pretrained(path, state_dict=state, safe_serialization=True)
            processor.save_pretrained(path)
            with open(os.path.join(path, "r1v_meta.json"), "w") as f:
                json.dump(meta, f, indent=2)
    elif rank == 0:
        save_checkpoint(model, processor, path, meta=meta)


def _save_rng(path: str) -> None:
    state = {
        "python": list(random.getstate()[1]),
        "numpy": np.random.get_state()[1].tolist(),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_initialized():  # GPU runs: dropout and sampling draw from the device's generator
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    with open(path, "w") as f:
        json.dump(state, f)


def _load_rng(path: str) -> None:
    with open(path) as f:
        state = json.load(f)
    random.setstate((3, tuple(state["python"]), None))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def train_loop_per_worker(job_dict: dict) -> None:
    """The Ray Train worker loop (see module docstring)."""
    import ray.train

    job = SFTJob(**job_dict)
    if not job.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import torch.distributed as dist

    from r1v_ray.metrics import StageMetrics, truncate_after
    from r1v_ray.model.assemble import load_checkpoint
    from r1v_ray.model.freeze import set_trainable
    from r1v_ray.model.varlen import use_varlen_attention
    from r1v_ray.sft.samples import encode_sample, pack, token_loss_sum

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = f"cuda:{ctx.get_local_rank()}" if job.use_gpu else "cpu"
    torch.manual_seed(job.seed + rank)
    model, processor = load_checkpoint(job.init_checkpoint, dtype=job.dtype, device=device)
    set_trainable(model, job.trainable_prefixes)
    use_varlen_attention(model)  # packed rows: attention per sample, no O(L^2) over the whole row
    model.train()
    shard = WorkerShard(job.data_uri, job.step_layout(), job.seed, rank, world)  # reads only this rank's rows
    gas, steps_per_epoch = shard.micro_batches, shard.steps_per_epoch
    total_steps = steps_per_epoch * job.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, job.weight_decay), lr=job.learning_rate, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, job.warmup_ratio, job.lr_scheduler))
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": gas,
        "train_batch_size": gas * world,
        "zero_optimization": {"stage": job.zero_stage},
        "gradient_clipping": job.max_grad_norm,
        "bf16": {"enabled": job.use_gpu and job.dtype == "bfloat16"},
        "steps_per_print": 1 << 30,
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)

    metrics = StageMetrics(job.stage, os.path.join(job.output_dir, METRICS_FILE) if rank == 0 else None)
    seen_path = os.path.join(job.output_dir, SEEN_FILE)
    global_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(os.path.join(d, "ds"), tag="state")  # our own files, written by this trainer
            with open(os.path.join(d, "state.json")) as f:
                global_step = json.load(f)["global_step"]
            _load_rng(os.path.join(d, f"rng_rank{rank}.json"))
        if rank == 0:  # steps after the checkpoint were lost with the failed run
            truncate_after(seen_path, global_step)
            truncate_after(metrics.path, global_step)
            with open(os.path.join(job.output_dir, RESUMES_FILE), "a") as f:
                f.write(json.dumps({"resumed_at_step": global_step, "time": time.time()}) + "\n")
    else:
        os.makedirs(job.output_dir, exist_ok=True)
        if rank == 0:
            for path in (seen_path, metrics.path):
                open(path, "w").close()

    dummy = encode_sample(shard.reader.take([0])[0], processor, job.max_length)
    window_start, window_tokens, window_samples = time.time(), 0, 0
    while global_step < total_steps:
        epoch = global_step // steps_per_epoch
        encoded = [[encode_sample(r, processor, job.max_length) for r in m] for m in shard.rows(global_step)]
        local_tokens = sum(sum(1 for t in s["labels"][1:] if t != -100) for mb in encoded for s in mb)
        counts = torch.tensor([float(local_tokens), 0.0], device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(counts)
        global_tokens = max(1.0, counts[0].item())
        loss_sum = torch.zeros(1)
        for mb in encoded:
            # Empty slots (end of epoch) still run forward/backward with zero weight: every
            # rank must make the same collective calls.
            batch = {k: v.to(device) for k, v in pack(mb or [dummy]).items()}
            summed, _ = token_loss_sum(engine, batch)
            weight = 0.0 if not mb else 1.0
            engine.backward(summed * weight * world * gas / global_tokens)
            engine.step()
            loss_sum += summed.detach().cpu() * weight
            window_tokens += sum(len(s["input_ids"]) for s in mb)
            window_samples += len(mb)
        global_step += 1
        stats = torch.tensor([loss_sum.item(), float(window_tokens), float(window_samples)], device=device)
        dist.all_reduce(stats)
        # The ids each rank really trained on, gathered: the record proves every sample trained once.
        step_ids: list = [None] * world
        dist.all_gather_object(step_ids, [s["id"] for mb in encoded for s in mb])
        if rank == 0:
            with open(seen_path, "a") as f:
                f.write(json.dumps({"step": global_step, "epoch": epoch, "ids": interleave_ranks(step_ids)}) + "\n")
        values = {
            "loss": stats[0].item() / global_tokens,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "epoch": epoch,
        }
        last = global_step == total_steps
        if global_step % job.log_every_steps == 0 or last:
            elapsed = max(1e-9, time.time() - window_start)
            values.update(tokens_per_s=stats[1].item() / elapsed, samples_per_s=stats[2].item() / elapsed)
            window_start, window_tokens, window_samples = time.time(), 0, 0
            metrics.log(global_step, **values)
        if global_step % job.checkpoint_every_steps == 0 or last:
            with tempfile.TemporaryDirectory() as tmp:
                engine.save_checkpoint(os.path.join(tmp, "ds"), tag="state")
                if rank == 0:
                    with open(os.path.join(tmp, "state.json"), "w") as f:
                        json.dump({"global_step": global_step, "epoch": epoch}, f)
                _save_rng(os.path.join(tmp, f"rng_rank{rank}.json"))
                export_hf(
                    engine,
                    processor,
                    os.path.join(tmp, "hf"),
                    job.zero_stage,
                    rank,
                    {"stage": job.stage, "step": global_step, "init_checkpoint": job.init_checkpoint},
                )
                ray.train.report({"step": global_step, **values}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        elif global_step % job.log_every_steps == 0:
            # Reports are consumed by the Train controller's poll loop: report only what is logged.
            ray.train.report({"step": global_step, **values})


def job_to_dict(job: SFTJob) -> dict:
    return asdict(job)
