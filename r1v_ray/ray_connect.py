"""Connecting to Ray: the cluster RAY_ADDRESS names, else a local Ray for this process."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> str | None:
    """Join a cluster when RAY_ADDRESS is set (`ray job submit` sets it; `RAY_ADDRESS=auto` joins
    the local head), else start a local Ray for this process. Returns the dashboard URL, if any.

    Locally, CPUs are over-subscribed logically (at least 8): engine actors and
    Ray Data stages each hold a CPU slot and would deadlock on 2 real cores.
    """
    import ray

    ray_data_defaults()
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"]).dashboard_url
    else:
        # The dashboard (when asked for) listens on localhost only: its job API is unauthenticated.
        return ray.init(
            num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=dashboard, dashboard_host="127.0.0.1"
        ).dashboard_url


def ray_data_defaults() -> None:
    """Two Ray Data settings for every stage's passes:

    * `preserve_order`: rows leave each pass (judge pools, engine pools) in the order they entered, so the
      files a stage writes, and the training that reads them by position, are the same on every run with
      the same seeds; otherwise they follow whichever batch finished first.
    * the V1 parquet reader, unless RAY_DATA_USE_DATASOURCE_V2 says otherwise. The V2 reader (Ray 2.60's
      default) lists files in a task that starts actors to read the footers: ~8 s before the first row of a
      one-file, 156 KB dataset on 2 cores, against ~0.3 s for V1 (benchmarks/parquet_read.py). A run reads a
      few small files a dozen times (each judge pass, each evaluation).
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        ctx.use_datasource_v2 = False
