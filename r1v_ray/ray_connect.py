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

    use_parquet_reader_v1()
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"]).dashboard_url
    else:
        # The dashboard (when asked for) listens on localhost only: its job API is unauthenticated.
        return ray.init(
            num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=dashboard, dashboard_host="127.0.0.1"
        ).dashboard_url


def use_parquet_reader_v1() -> None:
    """Ray Data's `read_parquet` through its V1 datasource, unless RAY_DATA_USE_DATASOURCE_V2 says otherwise.

    The V2 reader (Ray 2.60's default) lists files in a task that starts actors to read the footers: 6-12 s
    before the first row of a one-file, 156 KB dataset on 2 cores, against 0.2-1.9 s for V1
    (benchmarks/parquet_read.py). A run reads a few small files a dozen times (each judge pass, each evaluation).
    """
    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        from ray.data import DataContext

        DataContext.get_current().use_datasource_v2 = False
