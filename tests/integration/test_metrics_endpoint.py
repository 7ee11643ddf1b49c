"""Stage metrics reach a local head's Prometheus endpoint, scraped while the stages run: the scoring
stage's (driver side) and a training-style gauge set inside an actor, each tagged with its stage; the
actor's stays there between two `log` calls."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRIVER = r"""
import socket, sys, threading, time, urllib.request
sys.path.insert(0, {root!r})
import ray
from r1v_ray.config import load_config
from r1v_ray.data.schema import canonical_table
from r1v_ray.data.synthetic import make_row
from r1v_ray.distill.dataflow import score

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ray.init(num_cpus=4, include_dashboard=False, _metrics_export_port=port)  # this process's head, stopped with it
seen = {{}}  # (metric, stage) -> last value scraped: a Prometheus scraping while the stages run


def scrape():
    body = urllib.request.urlopen(f"http://127.0.0.1:{{port}}/metrics", timeout=10).read().decode()
    found = {{}}
    for line in body.splitlines():
        if line.startswith("ray_r1v_"):
            found[(line.split("{{")[0], line.split('stage="')[1].split('"')[0])] = float(line.rsplit(" ", 1)[1])
    return found


def scrape_forever():
    while True:
        try:
            seen.update(scrape())
        except OSError:  # the agent not up yet
            pass
        time.sleep(0.5)


threading.Thread(target=scrape_forever, daemon=True).start()
cfg = load_config({config!r}, ["judge.num_workers=1"])
score(cfg, ray.data.from_arrow(canonical_table([make_row(0, "train", i) for i in range(8)])), {out!r})


@ray.remote
class Trainer:
    def log(self):
        from r1v_ray.metrics import StageMetrics
        self.metrics = StageMetrics("sft/test", None)  # open for the trainer's life, as the recipes keep it
        self.metrics.log(1, loss=1.25, tokens_per_s=321.0)


trainer = Trainer.remote()
ray.get(trainer.log.remote())
wanted = [("ray_r1v_loss", "sft/test"), ("ray_r1v_rows", "score"), ("ray_r1v_judge_calls", "score")]
deadline = time.time() + 240  # a bound on the wait for the first exports of a loaded 2-core host
while time.time() < deadline and not all(w in seen for w in wanted):
    time.sleep(1)
print("MISSING", [w for w in wanted if w not in seen])
for (name, stage), value in seen.items():
    print("METRIC", name, stage, value)
time.sleep(5)  # five report intervals, two past the agent's TTL for a gauge not exported again
print("KEPT", scrape().get(("ray_r1v_loss", "sft/test")))
"""


def test_stage_metrics_on_the_metrics_endpoint(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_metrics_report_interval_ms"] = "1000"
    script = DRIVER.format(
        root=ROOT, config=os.path.join(ROOT, "configs", "demo", "tiny.yaml"), out=str(tmp_path / "s")
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {
        (name, stage): float(value)
        for _, name, stage, value in (line.split() for line in proc.stdout.splitlines() if line.startswith("METRIC"))
    }
    assert seen.get(("ray_r1v_loss", "sft/test")) == 1.25, proc.stdout[-3000:]
    assert seen.get(("ray_r1v_tokens_per_s", "sft/test")) == 321.0
    assert seen.get(("ray_r1v_rows", "score")) == 8 and seen.get(("ray_r1v_judge_calls", "score")) == 8
    assert seen.get(("ray_r1v_rows_per_s", "score"), 0) > 0
    # Ray's agent drops a gauge two report intervals after its last export; the open StageMetrics re-sets it.
    assert "KEPT 1.25" in proc.stdout, proc.stdout[-3000:]
