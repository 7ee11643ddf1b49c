"""What every job script shares on its command line: --config, --set, --force, and the config they resolve to."""

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
