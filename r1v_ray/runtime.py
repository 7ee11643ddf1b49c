"""What every job script shares: config arguments and connecting to (or starting) Ray."""

from __future__ import annotations

import argparse
import os

from r1v_ray.config import R1VConfig, load_config


def job_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", help="YAML config (defaults: the paper's settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. eval.runs=3")
    return ap


def load_job_config(args: argparse.Namespace) -> R1VConfig:
    return load_config(args.config, args.set)


def init_ray(num_cpus: int | None = None) -> None:
    """Join a cluster when RAY_ADDRESS is set (`ray job submit` sets it; `RAY_ADDRESS=auto` joins
    the local head), else start a local Ray for this process.

    Locally, CPUs are over-subscribed logically (at least 8): engine actors and
    Ray Data stages each hold a CPU slot and would deadlock on 2 real cores.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=False)
