"""Launch one SFT run on Ray Train and publish its final HF checkpoint."""

from __future__ import annotations

import os

from r1v_ray import store
from r1v_ray.data.io import count_rows, resolve_fs
from r1v_ray.run_dir import TRAIN_MODEL
from r1v_ray.sft.recipe import train_loop_per_worker
from r1v_ray.sft.trainer import SFTJob, job_to_dict


def _worker_resources(job: SFTJob) -> dict | None:
    """Ray Train's defaults (1 CPU, plus 1 GPU on GPU runs), plus the learner nodes' custom resource."""
    s = job.sft
    if not s.node_resource:
        return None
    return {"CPU": 1, **({"GPU": 1} if s.use_gpu else {}), s.node_resource: 1}


def run_sft(job: SFTJob) -> str:
    """Train, resuming from the run's own latest checkpoint if one exists (surviving `sft.max_failures`
    worker failures); returns `output_dir/model`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if count_rows(job.data_uri) == 0:  # else every worker fails on it, and Ray Train retries them
        raise ValueError(f"{job.stage}: no training rows in {job.data_uri}")
    # The Train controller polls its workers (default every 2 s): an end or a failure is seen that much
    # later. Runs here are minutes long, so a 0.5 s poll is cheap; an explicit setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    storage_fs, storage_path = resolve_fs(job.output_dir)
    if not store.is_remote(job.output_dir):
        storage_fs = None  # Ray Train's own local handling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job_to_dict(job),
        scaling_config=ScalingConfig(
            num_workers=job.sft.num_workers, use_gpu=job.sft.use_gpu, resources_per_worker=_worker_resources(job)
        ),
        torch_config=TorchConfig(backend="nccl" if job.sft.use_gpu else "gloo"),
        run_config=RunConfig(
            name="ray_train",
            # Ray Train's checkpoints live in the run directory, on its filesystem (an object store too).
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=job.sft.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage}: training finished without a checkpoint")
    final = store.join(job.output_dir, TRAIN_MODEL)
    checkpoint = result.checkpoint  # copied within its filesystem: no round trip through this node
    store.publish_from(checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/hf", final)
    return final
