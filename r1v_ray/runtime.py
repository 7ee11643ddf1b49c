"""What every job script shares: config arguments and connecting to (or starting) Ray."""

from __future__ import annotations

import argparse
import os

from r1v_ray.config import R1VConfig, load_config


def job_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", help="YAML config (defaults: the paper's settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. eval.runs=3")
    ap.add_argument("--force", action="store_true", help="re-run a stage whose manifest says complete")
    return ap


def load_job_config(args: argparse.Namespace) -> R1VConfig:
    from r1v_ray.config import ConfigError
    from r1v_ray.run_dir import SCRATCH_ENV, resolve_run_dir

    cfg = load_config(args.config, args.set)
    try:  # Ray workers run elsewhere: paths they receive must be absolute (or URIs)
        cfg.run_dir = resolve_run_dir(cfg.run_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.scratch_dir:  # this process and a local Ray's workers (they inherit it); cluster nodes set their own
        os.environ.setdefault(SCRATCH_ENV, os.path.abspath(cfg.scratch_dir))
    return cfg


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> str | None:
    """Join a cluster when RAY_ADDRESS is set (`ray job submit` sets it; `RAY_ADDRESS=auto` joins
    the local head), else start a local Ray for this process. Returns the dashboard URL, if any.

    Locally, CPUs are over-subscribed logically (at least 8): engine actors and
    Ray Data stages each hold a CPU slot and would deadlock on 2 real cores.
    """
    import ray

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"]).dashboard_url
    else:
        # The dashboard (when asked for) listens on localhost only: its job API is unauthenticated.
        return ray.init(
            num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=dashboard, dashboard_host="127.0.0.1"
        ).dashboard_url


def stage_output(cfg: R1VConfig, stage: str, key: str = "model") -> str:
    """An earlier stage's output, or a clear error naming the job to run first."""
    from r1v_ray.stages.manifest import StageRun

    run = StageRun(cfg, stage)
    if not run.complete:
        raise SystemExit(f"stage '{stage}' has not completed in {cfg.run_dir}; run jobs/{stage}.py first")
    return run.manifest["outputs"][key]
