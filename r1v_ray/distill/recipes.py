"""Distillation and scoring as stages of a run: which model generates, which data goes in, what comes out.

The first distillation runs after re-assembly, by the re-assembled model
(self-distillation, paper 2.3: "prior to Stage 1"); before each iterative-SFT iteration the data is re-distilled with
M_{t-1} and re-scored. The query assessment (QDAM, VTIA) does not depend on
the model, so re-distillation reuses it: only generation, verification and
revision run again.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from r1v_ray import store
from r1v_ray.atomic import write_json_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.sources import dataset_uris
from r1v_ray.distill.stage import distill, score
from r1v_ray.model.factory import assemble_initial
from r1v_ray.run_dir import BOUNDS, RunLayout
from r1v_ray.runs import StageRun

MODEL_STAGES = ("grpo", "sft", "reassemble", "mlp_init")  # newest first


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
    for stage in MODEL_STAGES:
        run = StageRun(cfg, stage)
        if run.complete:
            return run.manifest["outputs"]["model"]
    # Outside distill/: a forced re-run empties that folder after this model was chosen.
    return assemble_initial(
        cfg.model,
        cfg.run_dir,
        RunLayout(cfg.run_dir).base_model(),
        seed=cfg.seed,
        corpus=synthetic.corpus,
        task=synthetic,
    )


def distill_stage(cfg: R1VConfig, run: StageRun, model: str, train_uri: str) -> tuple[dict, dict]:
    metrics = distill(cfg, ray.data.read_parquet(train_uri), model, run.dir)
    return {
        "data": run.path_for("data"),
        "rejected": [run.path_for("rejected_assess"), run.path_for("rejected")],
        "model": model,
    }, metrics


def score_stage(cfg: R1VConfig, run: StageRun, data_uri: str) -> tuple[dict, dict]:
    metrics = score(cfg, ray.data.read_parquet(data_uri), run.dir)
    return {"data": run.path_for("data"), "rejected": run.path_for("rejected")}, metrics


def training_data(cfg: R1VConfig) -> str:
    """The SFT / GRPO training set: scored data, else distilled data, else the canonical train split."""
    for stage in ("score", "distill"):
        run = StageRun(cfg, stage)
        if run.complete:
            return run.manifest["outputs"]["data"]
    return dataset_uris(cfg)[0]


def redistill_hook(cfg: R1VConfig, run: StageRun) -> Callable[[int, str], str] | None:
    """`before_iteration(t, model)` for iterative SFT: re-distill with M_{t-1}, re-score; returns the new data."""
    distilled = StageRun(cfg, "distill")
    if not cfg.distill.before_iterations or not distilled.complete:
        return None
    train = distilled.manifest["inputs"]["train"]
    train_uri = train["path"] if isinstance(train, dict) else train

    def before_iteration(t: int, model: str) -> str:
        done = RunLayout(cfg.run_dir).redistill_done(t)
        out = store.dirname(done)
        if store.is_file(done):
            return store.read_json(done)["data"]
        reuse_first_pass(distilled.dir, store.join(out, "distill"))
        d = distill(cfg, ray.data.read_parquet(train_uri), model, store.join(out, "distill"), stage=f"sft/M{t}/distill")
        s = score(
            cfg,
            ray.data.read_parquet(store.join(out, "distill", "data")),
            store.join(out, "score"),
            stage=f"sft/M{t}/score",
        )
        summary = {"data": store.join(out, "score", "data"), "model": model, "distill": d, "score": s}
        write_json_atomic(done, summary, indent=2)
        return summary["data"]

    return before_iteration


def reuse_first_pass(src_dir: str, dst_dir: str) -> None:
    """Copy distillation's model-independent first pass (`assessed/`, `rejected_assess/`, then `bounds.json`).

    `distill` trusts `assessed/` whenever `bounds.json` exists, so `bounds.json` is copied last and
    `assessed/` appears only complete; a copy that died half-way is redone, never trusted.
    """
    bounds = store.join(dst_dir, BOUNDS)
    if store.is_file(bounds):
        return
    for name in ("assessed", "rejected_assess"):
        store.copy_tree(store.join(src_dir, name), store.join(dst_dir, name))
    store.write_bytes(bounds, store.read_bytes(store.join(src_dir, BOUNDS)))
