"""One metrics API for every stage: Ray dashboard gauges (ray.util.metrics), a JSONL file, and the
experiment trackers of `r1v_ray.tracking` (TensorBoard by default; MLflow, W&B by config)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
import weakref

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
        self._last: dict[str, float] = {}  # what the gauges show, re-set by _GaugeKeeper while this is open
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
                self._last[name] = float(value)
        if self._last:
            _GaugeKeeper.keep(self)
        if self.path:
            append_log.append(self.path, json.dumps(record) + "\n")
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(step, numbers)
        return record

    def refresh(self) -> None:
        """Set every gauge again to its last value (the keeper's thread calls it)."""
        for name, value in list(self._last.items()):
            self._gauges[name].set(value, tags={"stage": self.stage})

    def close(self) -> None:
        from r1v_ray.tracking import close_trackers

        _GaugeKeeper.drop(self)
        close_trackers(self.trackers)
        self.trackers = []


class _GaugeKeeper:
    """Keeps the gauges of open StageMetrics on the metrics endpoint between two `log` calls.

    In Ray 2.60 a process exports a gauge only in the report interval it was set in, and the node's
    metrics agent drops a series not exported for two intervals (RAY_metrics_report_interval_ms, 10 s by
    default): a gauge set once per step vanished from /metrics between steps, and a stage's final values
    right after it. One daemon thread per process sets them again twice per interval until `close()` (or
    until the StageMetrics is garbage collected)."""

    _open: weakref.WeakSet = weakref.WeakSet()
    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def keep(cls, metrics: StageMetrics) -> None:
        with cls._lock:
            cls._open.add(metrics)
            if cls._thread is None:
                cls._thread = threading.Thread(target=cls._run, name="r1v-gauge-keeper", daemon=True)
                cls._thread.start()

    @classmethod
    def drop(cls, metrics: StageMetrics) -> None:
        with cls._lock:
            cls._open.discard(metrics)

    @staticmethod
    def period_s() -> float:
        try:
            import ray

            return max(0.5, ray._config.metrics_report_interval_ms() / 2000)
        except Exception:  # no Ray config in this process: half of Ray's default interval
            return 5.0

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(cls.period_s())
            with cls._lock:
                live = list(cls._open)
            for metrics in live:
                try:
                    metrics.refresh()
                except Exception:  # Ray shut down under us: the gauges have nowhere to go
                    cls.drop(metrics)


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
