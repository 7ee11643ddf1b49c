"""The score stage (paper 2.2): RM(x) in {0..5} for every sample, by the judge's rubric."""

from __future__ import annotations

import ray

from r1v_ray.config import R1VConfig
from r1v_ray.distill.dataflow import score
from r1v_ray.ray_connect import init_ray
from r1v_ray.stages.inputs import training_data
from r1v_ray.stages.manifest import StageRun, run_stage


def run(cfg: R1VConfig, force: bool = False, data: str | None = None) -> dict:
    """Score `data`, else the distilled data, else the canonical train split; returns the manifest."""
    init_ray()
    data = data or training_data(cfg, "score")
    return run_stage(cfg, "score", lambda run: body(cfg, run, data), {"data": data}, force)


def body(cfg: R1VConfig, run: StageRun, data_uri: str) -> tuple[dict, dict]:
    metrics = score(cfg, ray.data.read_parquet(data_uri), run.dir)
    return {"data": run.path_for("data"), "rejected": run.path_for("rejected")}, metrics
