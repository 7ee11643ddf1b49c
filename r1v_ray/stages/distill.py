"""The distill stage (paper 2.3): QDAM, VTIA, DRLC and self-distillation over the training set.

The first distillation runs after re-assembly, by the re-assembled model (self-distillation, paper 2.3:
"prior to Stage 1"); iterative SFT re-distills with M_{t-1} before each iteration (`stages.redistill`).
"""

from __future__ import annotations

import ray

from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.sources import dataset_uris
from r1v_ray.distill.dataflow import distill
from r1v_ray.model.factory import assemble_initial
from r1v_ray.ray_connect import init_ray
from r1v_ray.run_dir import RunLayout
from r1v_ray.stages.inputs import newest_model
from r1v_ray.stages.manifest import StageRun, run_stage


def run(cfg: R1VConfig, force: bool = False) -> dict:
    """Distill the canonical train split with `generation_model`; returns the manifest."""
    init_ray()
    train_uri, _ = dataset_uris(cfg)
    model = generation_model(cfg, reuse_finished=not force)
    return run_stage(
        cfg, "distill", lambda run: body(cfg, run, model, train_uri), {"train": train_uri, "model": model}, force
    )


def generation_model(cfg: R1VConfig, reuse_finished: bool = True) -> str:
    """distill.model, else the newest finished stage's model, else the assembled MLP-init starting point.

    Once distillation has finished, its model is the one it ran with (`reuse_finished`): stages finished
    later must not make a resubmitted, unchanged pipeline look as if distillation's input had changed.
    """
    if cfg.distill.model:
        return cfg.distill.model
    distilled = StageRun(cfg, "distill")
    if reuse_finished and distilled.complete:
        return distilled.manifest["outputs"]["model"]
    # Outside distill/: a forced re-run empties that folder after this model was chosen.
    return newest_model(cfg) or assemble_initial(
        cfg.model,
        cfg.run_dir,
        RunLayout(cfg.run_dir).base_model(),
        seed=cfg.seed,
        corpus=synthetic.corpus,
        task=synthetic,
    )


def body(cfg: R1VConfig, run: StageRun, model: str, train_uri: str) -> tuple[dict, dict]:
    metrics = distill(cfg, ray.data.read_parquet(train_uri), model, run.dir)
    return {
        "data": run.path_for("data"),
        "rejected": [run.path_for("rejected_assess"), run.path_for("rejected")],
        "model": model,
    }, metrics
