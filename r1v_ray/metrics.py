"""One metrics API for every stage: Ray dashboard gauges (ray.util.metrics) plus a JSONL file."""

from __future__ import annotations

import json
import os
import time


class StageMetrics:
    """`log(step, loss=..., lr=...)` sets one gauge per name (tagged by stage) and appends a JSONL record."""

    def __init__(self, stage: str, jsonl_path: str | None):
        self.stage = stage
        self.path = jsonl_path
        self._gauges: dict = {}
        if jsonl_path:
            os.makedirs(os.path.dirname(jsonl_path) or ".", exist_ok=True)

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
        return record


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
