"""Re-distillation before each iterative-SFT iteration (paper 2.3): the data re-distilled with M_{t-1}
and re-scored. The query assessment (QDAM, VTIA) does not depend on the model, so it is reused from the
distill stage: only generation, verification and revision run again.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from r1v_ray import store
from r1v_ray.atomic import write_json_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.distill.dataflow import distill, score
from r1v_ray.engines.rollout.actor import HeldWorkers
from r1v_ray.run_dir import BOUNDS, RunLayout
from r1v_ray.stages.manifest import StageRun


def redistill_hook(cfg: R1VConfig, run: StageRun) -> Callable[..., str] | None:
    """`before_iteration(t, model, engines=None)` for iterative SFT: re-distill with M_{t-1} (on the stage's
    held rollout workers, `engines`, when given), re-score; returns the new data."""
    distilled = StageRun(cfg, "distill")
    if not cfg.distill.before_iterations or not distilled.complete:
        return None
    train = distilled.manifest["inputs"]["train"]
    train_uri = train["path"] if isinstance(train, dict) else train

    def before_iteration(t: int, model: str, engines: HeldWorkers | None = None) -> str:
        done = RunLayout(cfg.run_dir).redistill_done(t)
        out = store.dirname(done)
        if store.is_file(done):
            return store.read_json(done)["data"]
        reuse_first_pass(distilled.dir, store.join(out, "distill"))
        workers = engines.serving(model) if engines else None
        d = distill(
            cfg, ray.data.read_parquet(train_uri), model, store.join(out, "distill"), f"sft/M{t}/distill", workers
        )
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
