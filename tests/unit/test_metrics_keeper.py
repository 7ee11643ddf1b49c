"""StageMetrics keeps its gauges exported between two `log` calls (Ray's agent drops a gauge series two
report intervals after its last export), and stops at `close()`."""

from __future__ import annotations

import time

from r1v_ray import metrics
from r1v_ray.metrics import StageMetrics


class FakeGauge:
    def __init__(self):
        self.sets: list[tuple[float, dict]] = []

    def set(self, value, tags):
        self.sets.append((value, tags))


def test_open_stage_metrics_set_their_gauges_again_until_closed(monkeypatch):
    monkeypatch.setattr(metrics._GaugeKeeper, "period_s", staticmethod(lambda: 0.02))
    # A fresh thread: one an earlier test started may sleep out Ray's default period (5 s) first.
    monkeypatch.setattr(metrics._GaugeKeeper, "_thread", None)
    m = StageMetrics("sft/test", None)
    loss = m._gauges["loss"] = FakeGauge()
    m.log(1, loss=2.5)
    time.sleep(0.5)
    assert len(loss.sets) >= 5, "the keeper did not set the gauge again"
    assert all(s == (2.5, {"stage": "sft/test"}) for s in loss.sets)
    m.log(2, loss=1.5)
    m.close()
    time.sleep(0.1)  # a refresh already under way may finish
    after_close = len(loss.sets)
    time.sleep(0.3)
    assert len(loss.sets) == after_close, "a closed StageMetrics is still being refreshed"
    assert loss.sets[-1] == (1.5, {"stage": "sft/test"})
