"""One Ray Train worker's SFT run, torchtune's recipe shape: setup, resume, train_step, save_checkpoint.
A worker runs a chain of jobs one after the other (`train_loop_per_worker`), each a recipe of its own.

Every rank runs the same collectives in the same order: token counts and statistics are all-reduced,
the ids each rank trained on are gathered (rank 0 records them), and an empty micro-batch slot at the end
of an epoch still runs forward/backward with zero weight.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import torch

from r1v_ray import append_log, store
from r1v_ray.run_dir import TRAIN_MODEL
from r1v_ray.sft.data import WorkerShard, interleave_ranks
from r1v_ray.sft.trainer import (
    METRICS_FILE,
    RESUMES_FILE,
    SEEN_FILE,
    SFTJob,
    job_from_dict,
    load_rng,
    lr_lambda,
    save_rng,
)


class SFTRecipe:
    def __init__(self, job: SFTJob):
        """Setup: this rank's data shard, the learner engine (sharded under ZeRO-3), optimizer and schedule."""
        import ray.train

        from r1v_ray.engines.learner import LearnerEngine, param_groups
        from r1v_ray.metrics import StageMetrics

        ctx = ray.train.get_context()
        self.job, s = job, job.sft
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = f"cuda:{ctx.get_local_rank()}" if s.use_gpu else "cpu"
        torch.manual_seed(s.seed + self.rank)
        self.shard = WorkerShard(job.data_uri, job.step_layout(), s.seed, self.rank, self.world)
        self.total_steps = self.shard.steps_per_epoch * job.epochs
        self.learner = LearnerEngine(
            job.init_checkpoint, job.trainable_prefixes, zero_stage=s.zero_stage, use_gpu=s.use_gpu,
            dtype=job.dtype, device=self.device, world=self.world, micro_steps=self.shard.micro_batches,
            max_grad_norm=s.max_grad_norm,
        )  # fmt: skip
        optimizer = torch.optim.AdamW(
            param_groups(self.learner.model, s.weight_decay), lr=job.learning_rate, betas=(0.9, 0.999)
        )
        schedule = lr_lambda(self.total_steps, s.warmup_ratio, s.lr_scheduler)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.learner.start(optimizer, self.scheduler)
        self.metrics = StageMetrics(job.stage, store.join(job.output_dir, METRICS_FILE) if self.rank == 0 else None)
        self.seen_path = store.join(job.output_dir, SEEN_FILE)
        self._seen_pending: list[str] = []  # rank 0's records since the last checkpoint, written with it
        self.global_step = 0
        self.window = (time.time(), 0, 0)  # (start, tokens, samples) since the last logged step

    def resume(self) -> None:
        """From Ray Train's latest checkpoint of this job, if any; else start the job's records afresh. In a
        chain the latest checkpoint may be the job before's: its `state.json` names its job."""
        import ray.train

        from r1v_ray.metrics import truncate_after

        checkpoint = ray.train.get_checkpoint()
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                with open(os.path.join(d, "state.json")) as f:
                    state = json.load(f)
                if state.get("stage", self.job.stage) == self.job.stage:
                    self.learner.load_state(d)
                    load_rng(os.path.join(d, f"rng_rank{self.rank}.json"))
                else:
                    state = None
        if state is None:
            if self.rank == 0:
                for path in (self.seen_path, self.metrics.path):
                    store.write_text(path, "")
            return
        self.global_step = state["global_step"]
        if self.rank == 0:  # steps after the checkpoint were lost with the failed run
            truncate_after(self.seen_path, self.global_step)
            truncate_after(self.metrics.path, self.global_step)
            record = {"resumed_at_step": self.global_step, "time": time.time()}
            append_log.append(store.join(self.job.output_dir, RESUMES_FILE), json.dumps(record) + "\n")

    def train_step(self) -> dict:
        """One optimizer step over this rank's micro-batches; the loss is a token mean over the global batch."""
        import torch.distributed as dist

        from r1v_ray.sft.samples import encode_sample, pack, token_loss_sum

        job, engine, gas = self.job, self.learner.engine, self.shard.micro_batches
        epoch = self.global_step // self.shard.steps_per_epoch
        processor, rows = self.learner.processor, self.shard.rows(self.global_step)
        encoded = [[encode_sample(r, processor, job.sft.max_length) for r in m] for m in rows]
        local_tokens = sum(sum(1 for t in s["labels"][1:] if t != -100) for mb in encoded for s in mb)
        counts = torch.tensor([float(local_tokens), 0.0], device=self.device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(counts)
        global_tokens = max(1.0, counts[0].item())
        loss_sum, tokens, samples = torch.zeros(1), 0, 0
        for mb in encoded:
            batch = {k: v.to(self.device) for k, v in pack(mb or [self._filler()]).items()}
            summed, _ = token_loss_sum(engine, batch)
            weight = 1.0 if mb else 0.0
            engine.backward(summed * weight * self.world * gas / global_tokens)
            engine.step()
            loss_sum += summed.detach().cpu() * weight
            tokens, samples = tokens + sum(len(s["input_ids"]) for s in mb), samples + len(mb)
        self.global_step += 1
        start, window_tokens, window_samples = self.window
        self.window = (start, window_tokens + tokens, window_samples + samples)
        stats = torch.tensor([loss_sum.item(), float(self.window[1]), float(self.window[2])], device=self.device)
        dist.all_reduce(stats)
        self._record_ids(epoch, [s["id"] for mb in encoded for s in mb])
        values = {
            "loss": stats[0].item() / global_tokens,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "epoch": epoch,
        }
        if self._logs_now():
            elapsed = max(1e-9, time.time() - start)
            values.update(tokens_per_s=stats[1].item() / elapsed, samples_per_s=stats[2].item() / elapsed)
            self.window = (time.time(), 0, 0)
            self.metrics.log(self.global_step, **values)
        return values

    def _filler(self) -> dict:
        """A real sample for the zero-weight slots (row 0 of the shard's dataset), encoded once."""
        from r1v_ray.sft.samples import encode_sample

        if not hasattr(self, "_dummy"):
            self._dummy = encode_sample(self.shard.reader.take([0])[0], self.learner.processor, self.job.sft.max_length)
        return self._dummy

    def _record_ids(self, epoch: int, mine: list[str]) -> None:
        """The ids each rank really trained on, gathered: the record proves every sample trained once. They are
        written with the next checkpoint (`_write_seen`): steps after a checkpoint are redone after a failure,
        and on an object store one append per step costs a request and a rewritten segment each."""
        import torch.distributed as dist

        per_rank: list = [None] * self.world
        dist.all_gather_object(per_rank, mine)
        if self.rank == 0:
            record = {"step": self.global_step, "epoch": epoch, "ids": interleave_ranks(per_rank)}
            self._seen_pending.append(json.dumps(record) + "\n")

    def _write_seen(self) -> None:
        if self._seen_pending:
            append_log.append(self.seen_path, "".join(self._seen_pending))
            self._seen_pending = []

    def _logs_now(self) -> bool:
        return self.global_step % self.job.sft.log_every_steps == 0 or self.global_step == self.total_steps

    def save_checkpoint(self, values: dict) -> None:
        """DeepSpeed state, step, every rank's RNG and an HF export, reported to Ray Train as one checkpoint.
        At the job's last step the export is published as the job's model instead (a chain's next job
        starts from it)."""
        import ray.train

        job = self.job
        self._write_seen()  # before the checkpoint exists: a resume from it finds its steps' records
        with tempfile.TemporaryDirectory() as tmp:
            self.learner.save_state(tmp)
            if self.rank == 0:
                with open(os.path.join(tmp, "state.json"), "w") as f:
                    json.dump({"global_step": self.global_step, "epoch": values["epoch"], "stage": job.stage}, f)
            save_rng(os.path.join(tmp, f"rng_rank{self.rank}.json"))
            meta = {"stage": job.stage, "step": self.global_step, "init_checkpoint": job.init_checkpoint}
            hf = os.path.join(tmp, "hf")
            self.learner.export_hf(hf, self.rank, meta)
            if self.rank == 0 and self.global_step == self.total_steps:
                store.publish_dir(hf, store.join(job.output_dir, TRAIN_MODEL))
                shutil.rmtree(hf)  # the job's model now: the last checkpoint need not upload it again
            ray.train.report({"step": self.global_step, **values}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def run(self) -> None:
        import ray.train

        self.resume()
        while self.global_step < self.total_steps:
            values = self.train_step()
            if self.global_step % self.job.sft.checkpoint_every_steps == 0 or self.global_step == self.total_steps:
                self.save_checkpoint(values)
            elif self.global_step % self.job.sft.log_every_steps == 0:
                # Reports are consumed by the Train controller's poll loop: report only what is logged.
                ray.train.report({"step": self.global_step, **values})


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker entry point: the chain's jobs in order (see the module docstring). A job whose
    model is published already (a chain restarted after a failure) is not trained again."""
    import gc

    import torch.distributed as dist

    from r1v_ray.model.assemble import checkpoint_complete

    for job in map(job_from_dict, config["jobs"]):
        if not checkpoint_complete(store.join(job.output_dir, TRAIN_MODEL)):
            SFTRecipe(job).run()
            gc.collect()  # the job's engine, optimizer and model before the next job builds its own
        dist.barrier()  # the next job starts from this one's model, which rank 0 published
