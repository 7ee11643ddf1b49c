"""The run directory on object storage: every file a stage keeps goes to the bucket (a local moto S3 server),
none to a local folder; checkpoints are staged into scratch once and published whole."""

from __future__ import annotations

import json
import os
import time

import pytest
from s3_server import moto_s3

from r1v_ray import store
from r1v_ray.config import ConfigError, load_config
from r1v_ray.run_dir import RunLayout, resolve_run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        yield server


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """The test runs in an empty folder (and a scratch folder beside it): whatever lands locally shows."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("R1V_SCRATCH_DIR", str(tmp_path / "scratch"))
    return cwd


def test_the_paper_configs_manifest_goes_to_the_bucket(empty_cwd, monkeypatch):
    """The issue's reproduction, unchanged: the paper config's own run_dir (s3://my-bucket/...)."""
    from r1v_ray.stages.manifest import StageRun

    with moto_s3("my-bucket") as s3:
        cfg = load_config(os.path.join(ROOT, "configs", "paper", "r1v-38b.yaml"))
        StageRun(cfg, "distill").start()
        assert os.listdir(empty_cwd) == [], "a local folder was written (the old ./s3: bug)"
        assert "r1v-runs/r1v-38b/distill/manifest.json" in s3.keys()
        again = StageRun(cfg, "distill")
        assert again.manifest["status"] == "running" and again.manifest["attempts"] == 1


def test_stage_run_round_trip_skip_and_force_on_s3(s3, empty_cwd):
    from r1v_ray.stages.manifest import StageRun, run_stage

    cfg = load_config(None, ["run_dir=s3://r1v-test/roundtrip", "judge.kind=offline", "tracking.tensorboard=false"])
    calls = []

    def body(run):
        calls.append(run.dir)
        store.write_json(run.path_for("state.json"), {"step": 3})
        return {"data": run.path_for("data")}, {"rows": 7}

    first = run_stage(cfg, "score", body)
    assert first["status"] == "complete" and calls == ["s3://r1v-test/roundtrip/score"]
    assert StageRun(cfg, "score").complete and store.read_json(calls[0] + "/state.json") == {"step": 3}
    assert run_stage(cfg, "score", body)["metrics"]["rows"] == 7 and len(calls) == 1  # complete: skipped
    store.write_text(calls[0] + "/stale.txt", "from the first attempt")
    run_stage(cfg, "score", body, force=True)
    assert len(calls) == 2 and "roundtrip/score/stale.txt" not in s3.keys("roundtrip/")  # forced: emptied first
    assert os.listdir(empty_cwd) == []


def test_metrics_and_tensorboard_of_a_stage_on_s3(s3, empty_cwd, tmp_path):
    from r1v_ray.metrics import StageMetrics, read_jsonl, truncate_after
    from r1v_ray.stages.manifest import StageRun

    cfg = load_config(None, ["run_dir=s3://r1v-test/metrics"])
    run = StageRun(cfg, "grpo")
    run.start()
    metrics = StageMetrics("grpo", RunLayout(cfg.run_dir).metrics("grpo"))
    for step in range(1, 4):
        metrics.log(step, loss=1.0 / step)
    metrics.close()
    assert [r["step"] for r in read_jsonl(metrics.path)] == [1, 2, 3]
    truncate_after(metrics.path, 2)  # a resumed run drops the steps after its checkpoint
    assert [r["step"] for r in read_jsonl(metrics.path)] == [1, 2]
    events = [k for k in s3.keys("metrics/grpo/tensorboard/") if "tfevents" in k]
    assert events, "TensorBoard's event files were not uploaded to the run directory"
    assert os.listdir(empty_cwd) == [] and sorted(os.listdir(tmp_path)) == ["cwd", "scratch"]


def test_a_remote_dataset_folder_is_complete_only_once_marked(s3, empty_cwd):
    from r1v_ray.data.io import count_rows
    from r1v_ray.data.sources import dataset_uris

    cfg = load_config(None, ["run_dir=s3://r1v-test/data", "data.synthetic.n_train=5", "data.synthetic.n_test=3"])
    train, test = dataset_uris(cfg)
    assert train == RunLayout(cfg.run_dir).synthetic("train") and count_rows(train) == 5 and count_rows(test) == 3
    assert store.dir_complete(train)

    def dies(out):
        store.write_text(store.join(out, "part-00000.parquet"), "half")
        raise KeyboardInterrupt

    half = "s3://r1v-test/data/half"
    with pytest.raises(KeyboardInterrupt):
        store.write_dir_once(half, dies)
    assert not store.dir_complete(half)  # no marker: redone, never trusted
    assert store.write_dir_once(half, lambda out: store.write_text(store.join(out, "x"), "whole"))
    assert store.listing(half) == {"x": 5, "_COMPLETE": 0}
    assert os.listdir(empty_cwd) == []


def test_checkpoints_publish_whole_and_stage_once(s3, empty_cwd, tmp_path, tiny_checkpoint, monkeypatch):
    import pyarrow.fs as pafs

    from r1v_ray.model.assemble import checkpoint_complete, read_meta

    uri = "s3://r1v-test/ckpt/model"
    order = []
    real_copy = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda src, dst, **kw: (order.append(dst), real_copy(src, dst, **kw)))
    store.publish_dir(tiny_checkpoint, uri)
    assert order[-1].endswith("/config.json"), "config.json vouches for the checkpoint: it goes last"
    assert checkpoint_complete(uri) and read_meta(uri)["stage"] == "test"
    store.remove(uri + "/model.safetensors")
    assert not checkpoint_complete(uri)
    store.publish_dir(tiny_checkpoint, uri)

    local = store.stage_in(uri)
    assert local.startswith(str(tmp_path / "scratch")) and checkpoint_complete(local)
    order.clear()
    assert store.stage_in(uri) == local and order == [], "a staged checkpoint was fetched again"
    store.write_text(uri + "/extra.txt", "changed")  # the remote folder changed: staged anew
    assert os.path.exists(os.path.join(store.stage_in(uri), "extra.txt"))
    store.publish_dir(tiny_checkpoint, uri)
    store.stage_in(uri)
    time.sleep(1.1)  # S3 times are in seconds
    store.publish_dir(tiny_checkpoint, uri)  # republished in place, every name and size the same (a forced re-run)
    order.clear()
    assert store.stage_in(uri) == local and order, "a stale staged copy was reused"
    assert os.listdir(empty_cwd) == []


def test_an_fsspec_run_directory(empty_cwd):
    """A filesystem pyarrow does not know (fsspec's memory://) goes through the same layout."""
    from r1v_ray.stages.manifest import StageRun

    cfg = load_config(None, ["run_dir=memory://r1v/run", "tracking.tensorboard=false"])
    run = StageRun(cfg, "distill")
    run.start()
    run.finish({"data": run.path_for("data")})
    assert StageRun(cfg, "distill").complete
    assert json.loads(store.read_text("memory://r1v/run/distill/manifest.json"))["status"] == "complete"
    assert os.listdir(empty_cwd) == []


def test_a_relative_run_dir_is_refused_under_ray_job_submit(monkeypatch, tmp_path):
    import argparse

    from r1v_ray.job_cli import load_job_config

    monkeypatch.chdir(tmp_path)
    assert resolve_run_dir("runs/x") == str(tmp_path / "runs" / "x")  # resolved on the submitting machine
    assert resolve_run_dir("s3://b/run/") == "s3://b/run"
    job = {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    args = argparse.Namespace(config=None, set=["run_dir=runs/demo"])
    with pytest.raises(ConfigError, match=r"raysubmit_abc.*absolute path.*s3://"):
        load_job_config(args)
    assert load_job_config(argparse.Namespace(config=None, set=["run_dir=/shared/run"])).run_dir == "/shared/run"
    assert load_job_config(argparse.Namespace(config=None, set=["run_dir=s3://b/run"])).run_dir == "s3://b/run"


def test_scratch_makes_room_least_recently_used_first(tmp_path, monkeypatch):
    """Staging on a short disk: the copy unused longest goes; one used within the hour, one being staged and
    the one asked for stay; when that frees too little, staging stops before it copies, naming the folder."""
    import collections
    import fcntl

    from r1v_ray import scratch

    scratch_dir = tmp_path / "scratch"
    capacity = 3 * 1000 + 500  # room for three 1000-byte copies (and their records)

    def usage(path):
        used = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(scratch_dir) for f in fs if f != scratch.STAGED
        )
        return collections.namedtuple("usage", "total used free")(capacity, used, capacity - used)

    monkeypatch.setattr(scratch.shutil, "disk_usage", usage)
    monkeypatch.setattr(scratch, "HEADROOM", 1.0)

    def stage(name, age_s=0.0):
        store.write_bytes(f"memory://ckpt/{name}/model.safetensors", bytes(1000))
        local = store.stage_in(f"memory://ckpt/{name}", str(scratch_dir))
        record = os.path.join(local, scratch.STAGED)
        os.utime(record, (time.time() - age_s, time.time() - age_s))
        return local

    old, older = stage("old", 7200), stage("older", 9000)
    recent = stage("recent")
    staged = os.path.dirname(old)
    with open(os.path.join(staged, "busy.lock"), "w") as held:  # another process staging a fourth copy
        fcntl.flock(held, fcntl.LOCK_EX)
        os.makedirs(os.path.join(staged, "busy"))
        with open(os.path.join(staged, "busy", scratch.STAGED), "w") as f:
            f.write("{}")
        os.utime(os.path.join(staged, "busy", scratch.STAGED), (0, 0))  # the least recent of all, but locked
        busy = os.path.join(staged, "busy")
        new = stage("new")
    assert sorted(n for n in os.listdir(staged) if not n.endswith(".lock")) == ["busy", "new", "old", "recent"]
    assert os.path.isdir(old) and os.path.isdir(busy) and os.path.isdir(recent) and os.path.isdir(new)
    assert not os.path.exists(older)  # unused longest (busy was older still, but locked)
    assert store.stage_in("memory://ckpt/recent", str(scratch_dir)) == recent  # reused, not fetched again

    store.write_bytes("memory://ckpt/huge/model.safetensors", bytes(5000))
    with pytest.raises(OSError, match=r"scratch folder .* needs .*R1V_SCRATCH_DIR"):
        store.stage_in("memory://ckpt/huge", str(scratch_dir))
    assert not os.path.exists(os.path.join(staged, "huge.partial"))
