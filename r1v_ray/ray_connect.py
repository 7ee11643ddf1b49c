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

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"]).dashboard_url
    else:
        # The dashboard (when asked for) listens on localhost only: its job API is unauthenticated.
        return ray.init(
            num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=dashboard, dashboard_host="127.0.0.1"
        ).dashboard_url
