"""Evaluating one checkpoint (paper 3): Pass@1 over k sampled runs, per category and source. Not one of the
pipeline's stages (every SFT model and GRPO's are evaluated inside their own stage); `jobs/eval.py` runs it."""

from __future__ import annotations

import os

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.synthetic import write_split
from r1v_ray.eval.evaluate import run_eval
from r1v_ray.ray_connect import init_ray
from r1v_ray.run_dir import RunLayout


def benchmark_data(cfg: R1VConfig) -> str:
    """data.test_path, else the synthetic test split (written once, the same the pipeline writes)."""
    if cfg.data.test_path:
        return cfg.data.test_path
    if cfg.data.source != "synthetic":
        raise SystemExit("eval: pass --data or set data.test_path (data.source is not synthetic)")
    s = cfg.data.synthetic
    data = RunLayout(cfg.run_dir).synthetic("test")
    store.write_dir_once(
        data, lambda out: write_split(out, s.n_test, seed=s.seed, split="test", image_size=s.image_size, tasks=s.tasks)
    )
    return data


def run(
    cfg: R1VConfig, checkpoint: str, data: str | None = None, out: str | None = None, name: str | None = None
) -> dict:
    """Evaluate `checkpoint` on `data` (default: `benchmark_data`) into `out` (default: RUN_DIR/eval/NAME);
    returns the evaluation report (`overall`, per category and source, runs, rejected)."""
    name = name or os.path.basename(os.path.normpath(checkpoint))
    data = data or benchmark_data(cfg)
    init_ray()
    return run_eval(cfg, checkpoint, data, out or RunLayout(cfg.run_dir).eval_out(name), name)
