"""One metrics API for every stage: Ray dashboard gauges (ray.util.metrics), a JSONL file, and the
experiment trackers of `r1v_ray.tracking` (TensorBoard by default; MLflow, W&B by config)."""

from __future__ import annotations

import json
import math
import os
import time
import warnings

from r1v_ray import append_log, store


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

            drop_torn_tail(jsonl_path)  # a resumed stage appends after whole lines only
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
            append_log.append(self.path, json.dumps(record) + "\n")
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(step, numbers)
        return record

    def close(self) -> None:
        from r1v_ray.tracking import close_trackers

        close_trackers(self.trackers)
        self.trackers = []


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file. A torn last line (a writer killed mid-append) is skipped with a
    warning; a corrupt line before it is an error, naming the file and the line."""
    lines = [(n, line) for n, line in enumerate(append_log.read(path).splitlines(keepends=True), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 and not line.endswith("\n"):
                warnings.warn(
                    f"{path}: skipping a torn last line {n} ({exc}): a writer stopped mid-record", stacklevel=2
                )
                break
            raise ValueError(f"{path}: line {n} is not valid JSON ({exc}); only a torn last line is skipped") from None
    return records


def drop_torn_tail(path: str) -> None:
    """Cut a torn last line (no newline) off a JSONL file, so appending after it keeps every line whole.
    (An object is written whole, never torn: only local files need it.)"""
    if store.is_remote(path) or not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def truncate_after(path: str, step: int) -> None:
    """Drop records of steps after `step` (they were computed by a run that is being resumed)."""
    keep = [r for r in read_jsonl(path) if r["step"] <= step]
    append_log.rewrite(path, "".join(json.dumps(r) + "\n" for r in keep))
