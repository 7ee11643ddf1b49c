"""Experiment tracking of a real stage (score, offline judge): its metrics read back from its TensorBoard event
files and from an MLflow tracking server on 127.0.0.1 equal metrics.jsonl step by step; the resolved config
and the manifest are there as params and artifacts; a W&B offline run is written; no secret reaches any."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from _procs import stop_group

from r1v_ray.config import load_config
from r1v_ray.data.io import write_parquet
from r1v_ray.data.schema import canonical_table
from r1v_ray.data.synthetic import make_row
from r1v_ray.metrics import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo", "tiny.yaml")
SECRET = "pw-5f1c9e0b7a"  # in a URL of the config: must be scrubbed everywhere


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free 127.0.0.1 port (sqlite store), up within 120 s, stopped at the end."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", str(tmp / "artifacts")]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server not up in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        stop_group(proc, 20)
        log.close()


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_stages_metrics_reach_tensorboard_mlflow_and_wandb(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import ray

    from r1v_ray.stages import score
    from r1v_ray.tracking import close_all

    monkeypatch.setenv("WANDB_SILENT", "true")
    data = str(tmp_path / "train")
    write_parquet(canonical_table([make_row(0, "train", i) for i in range(12)]), data)
    run_dir = tmp_path / "demo_run"
    cfg = load_config(
        CONFIG,
        [
            f"run_dir={run_dir}",
            f"judge.base_url=http://judge:{SECRET}@127.0.0.1:9/v1",
            "judge.num_workers=1",
            "tracking.mlflow=true",
            f"tracking.mlflow_tracking_uri={mlflow_server}",
            "tracking.mlflow_experiment=r1v-test",
            "tracking.wandb=true",
        ],
    )
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        manifest = score.run(cfg, data=data)
    finally:
        close_all()  # the stage's end: runs marked finished while the server still runs
        ray.shutdown()
    assert manifest["status"] == "complete" and manifest["metrics"]["rows_out"] == 12
    records = read_jsonl(str(run_dir / "score" / "metrics.jsonl"))
    assert records and records[-1]["step"] == 12 and records[-1]["rows"] == 12
    expected = {
        k: [(r["step"], float(r[k])) for r in records] for k in records[0] if k not in ("stage", "step", "time")
    }

    scalars = _tensorboard_scalars(str(run_dir / "score" / "tensorboard" / "score"))
    assert set(scalars) == set(expected)
    for name, points in expected.items():
        assert [s for s, _ in scalars[name]] == [s for s, _ in points]
        assert [v for _, v in scalars[name]] == pytest.approx([v for _, v in points], rel=1e-6)

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("r1v-test")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'demo_run/score'")
    assert run.info.status == "FINISHED"
    for name, points in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert [s for s, _ in history] == [s for s, _ in points], name
        assert [v for _, v in history] == pytest.approx([v for _, v in points], rel=1e-9), name
    params = run.data.params
    assert params["judge.kind"] == "offline" and params["tracking.mlflow"] == "True"
    assert params["judge.api_key_env"] == "OPENAI_API_KEY" and params["distill.batch_size"] == "64"
    assert run.data.tags["r1v.stage"] == "score"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "manifest.json"} <= artifacts
    saved = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=mlflow_server, dst_path=str(tmp_path / "downloaded")
    )
    manifest_text = open(os.path.join(saved, "manifest.json")).read()
    assert json.loads(manifest_text)["stage"] == "score" and "[redacted]@127.0.0.1:9" in manifest_text

    (wandb_run,) = glob.glob(str(run_dir / "score" / "wandb" / "wandb" / "offline-run-*"))
    (wandb_log,) = glob.glob(f"{wandb_run}/run-*.wandb")  # W&B's own record log (read by `wandb sync`)
    assert os.path.exists(f"{wandb_run}/files/r1v_config.yaml")
    assert all(name.encode() in open(wandb_log, "rb").read() for name in expected)

    # The secret reaches no tracker: not params, artifacts, event files, W&B files.
    assert all(SECRET not in v for v in params.values())
    written = [glob.glob(str(run_dir / "score" / d / "**" / "*"), recursive=True) for d in ("tensorboard", "wandb")]
    files = [p for p in sum(written, []) + glob.glob(f"{saved}/**/*", recursive=True) if os.path.isfile(p)]
    assert len(files) > 5
    for path in files:
        assert SECRET.encode() not in open(path, "rb").read(), path
