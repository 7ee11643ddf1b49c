"""One metrics API for every stage: Ray dashboard gauges (ray.util.metrics), a JSONL file, and the
experiment trackers of `r1v_ray.tracking` (TensorBoard by default; MLflow, W&B by config)."""

from __future__ import annotations

import json
import math
import os
import time


class StageMetrics:
    """`log(step, loss=..., lr=...)` sets one gauge per name (tagged by stage), appends a JSONL record and
    hands its numbers to the trackers at the same step.

    Trackers come with a JSONL path (rank 0 of a trainer has one, other ranks none); their settings are
    `tracking`, else the `tracking` section of the stage's manifest (see r1v_ray.tracking).
    """

    def __init__(self, stage: str, jsonl_path: str | None, tracking=None):
        self.stage = stage
        self.path = jsonl_path
        self._gauges: dict = {}
        self.trackers: list = []
        if jsonl_path:
            from r1v_ray.tracking import open_trackers

            os.makedirs(os.path.dirname(jsonl_path) or ".", exist_ok=True)
            self.trackers = open_trackers(stage, jsonl_path, tracking)

    def _gauge(self, name: str):
        if name not in self._gauges:
            try:
                from ray.util.metrics import Gauge

                self._gauges[name] = Gauge(f"r1v_{name}", description=f"r1v_ray {name}", tag_keys=("stage",))
            except Exception:  # no Ray here (a unit test, a plain script): the JSONL still gets it
                self._gauges[name] = None
        return self._gauges[name]

    def log(self, step: int, **values: float) -> dict:
        record = {"stage": self.stage, "step": step, "time": round(time.time(), 3), **values}
        for name, value in values.items():
            gauge = self._gauge(name)
            if gauge is not None and isinstance(value, (int, float)):
                gauge.set(float(value), tags={"stage": self.stage})
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(step, numbers)
        return record

    def close(self) -> None:
        from r1v_ray.tracking import close_trackers

        close_trackers(self.trackers)
        self.trackers = []


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> None:
    """Drop records of steps after `step` (they were computed by a run that is being resumed)."""
    keep = [r for r in read_jsonl(path) if r["step"] <= step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
