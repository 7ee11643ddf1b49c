"""Launch SFT runs on Ray Train: one run, or a chain of runs in one worker group (`run_sft`)."""

from __future__ import annotations

import os

from r1v_ray import store
from r1v_ray.data.io import count_rows, resolve_fs
from r1v_ray.model.assemble import checkpoint_complete
from r1v_ray.run_dir import TRAIN_MODEL
from r1v_ray.sft.recipe import train_loop_per_worker
from r1v_ray.sft.trainer import SFTJob, job_to_dict


def _worker_resources(job: SFTJob) -> dict | None:
    """Ray Train's defaults (1 CPU, plus 1 GPU on GPU runs), plus the learner nodes' custom resource."""
    s = job.sft
    if not s.node_resource:
        return None
    return {"CPU": 1, **({"GPU": 1} if s.use_gpu else {}), s.node_resource: 1}


def run_sft(jobs: SFTJob | list[SFTJob]) -> str | list[str]:
    """Train, resuming from the run's own latest checkpoint if one exists (surviving `sft.max_failures`
    worker failures); returns `output_dir/model`, which the workers publish at a job's last step.

    A list of jobs is a chain: each starts from the one before's model, in one Ray Train run (one worker
    group start for all), whose checkpoints live in the first job's folder; returns each job's model.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    chain = jobs if isinstance(jobs, list) else [jobs]
    first = chain[0]
    for job in chain:
        if count_rows(job.data_uri) == 0:  # else every worker fails on it, and Ray Train retries them
            raise ValueError(f"{job.stage}: no training rows in {job.data_uri}")
        if job.sft != first.sft:
            raise ValueError(f"{job.stage}: a chain's jobs share one `sft` section (workers, ZeRO stage, batches)")
    # The Train controller polls its workers (default every 2 s): an end or a failure is seen that much
    # later. Runs here are minutes long, so a 0.5 s poll is cheap; an explicit setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    storage_fs, storage_path = resolve_fs(first.output_dir)
    if not store.is_remote(first.output_dir):
        storage_fs = None  # Ray Train's own local handling
    s = first.sft
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"jobs": [job_to_dict(job) for job in chain]},
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=_worker_resources(first)
        ),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name="ray_train",
            # Ray Train's checkpoints live in the run directory, on its filesystem (an object store too).
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()
    finals = [store.join(job.output_dir, TRAIN_MODEL) for job in chain]
    for job, final in zip(chain, finals):
        if not checkpoint_complete(final):
            raise RuntimeError(f"{job.stage}: training finished without its model at {final}")
    return finals if isinstance(jobs, list) else finals[0]
