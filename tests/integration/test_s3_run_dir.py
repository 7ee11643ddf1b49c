"""Stages on a local Ray with the run directory in a local S3 server (moto): the synthetic data, the score
stage with the offline judge, and an evaluation of a checkpoint that lives in the bucket all
read and write the bucket; the only local files are the engines' scratch copies."""

from __future__ import annotations

import os

import pytest
from s3_server import moto_s3

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_score_and_eval_against_an_s3_run_directory(tmp_path, monkeypatch, tiny_checkpoint):
    import ray

    from r1v_ray import store
    from r1v_ray.config import load_config
    from r1v_ray.data.io import count_rows
    from r1v_ray.data.sources import dataset_uris
    from r1v_ray.eval.evaluate import run_eval
    from r1v_ray.run_dir import RunLayout
    from r1v_ray.stages import score

    cwd, scratch = tmp_path / "cwd", tmp_path / "scratch"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("R1V_SCRATCH_DIR", str(scratch))  # before ray.init: the workers inherit it
    with moto_s3("r1v-it") as s3:
        cfg = load_config(
            os.path.join(ROOT, "configs", "demo", "tiny.yaml"),
            [
                "run_dir=s3://r1v-it/run",
                "data.synthetic.n_train=12",
                "data.synthetic.n_test=4",
                "rollout.backend=hf",
                "eval.runs=1",
                "eval.max_tokens=8",
                "judge.num_workers=1",
            ],
        )
        layout = RunLayout(cfg.run_dir)
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        try:
            train, test = dataset_uris(cfg)  # written to the bucket
            scored = score.run(cfg, data=train)
            assert scored["status"] == "complete" and scored["outputs"]["data"] == layout.data("score")
            assert count_rows(layout.data("score")) + scored["metrics"]["rejected"] == 12
            assert (
                score.run(cfg, data=train)["attempts"] == 1
            )  # complete and unchanged (inputs fingerprinted on S3): skipped

            model = layout.path("checkpoints", "tiny")
            store.publish_dir(tiny_checkpoint, model)
            report = run_eval(cfg, model, test, layout.eval_out("tiny"), "tiny")
        finally:
            ray.shutdown()
        assert report["overall"]["n"] == 4 and report["checkpoint"] == model
        keys = s3.keys("run/")
        for key in ("score/manifest.json", "score/metrics.jsonl", "eval/tiny/eval.json", "eval/tiny/eval.md"):
            assert f"run/{key}" in keys, key
        assert any("score/tensorboard/" in k and "tfevents" in k for k in keys)
    assert os.listdir(cwd) == [], "a stage wrote into the working directory"
    assert sorted(os.listdir(tmp_path)) == ["cwd", "scratch"]
    staged = os.listdir(scratch / "staged" / "s3" / "r1v-it" / "run" / "checkpoints")
    assert staged == ["tiny"] or sorted(staged) == ["tiny", "tiny.lock"]  # the engine's local copy, once


def test_serving_discovers_and_stages_checkpoints_in_an_s3_run_directory(tmp_path, tiny_checkpoint):
    """`jobs/serve.py` on a run directory in a bucket: the checkpoints the stages wrote there are found
    (and nothing else), and the one a request names is loaded from this node's scratch copy."""
    from r1v_ray import store
    from r1v_ray.config import load_config
    from r1v_ray.serve.app import discover_checkpoints, load_serving_engine

    with moto_s3("r1v-serve") as s3:
        run = "s3://r1v-serve/run"
        for model in ("sft/M0/model", "sft/model", "grpo/checkpoints/step-2/model"):
            store.publish_dir(tiny_checkpoint, store.join(run, model))
        store.write_json(store.join(run, "grpo", "checkpoints", "step-2", "ds", "config.json"), {"zero": 3})
        store.write_text(store.join(run, "sft", "eval", "M0", "eval.json"), "{}")
        found = discover_checkpoints(run)
        assert found == {
            "grpo/checkpoints/step-2": f"{run}/grpo/checkpoints/step-2/model",
            "sft": f"{run}/sft/model",
            "sft/M0": f"{run}/sft/M0/model",
        }
        cfg = load_config(
            os.path.join(ROOT, "configs", "demo", "tiny.yaml"),
            [f"run_dir={run}", "rollout.backend=hf", f"scratch_dir={tmp_path / 'scratch'}"],
        )
        engine = load_serving_engine(found["sft/M0"], cfg)
        assert s3.keys("run/sft/M0/model/")  # still only in the bucket, and now staged here
        staged = tmp_path / "scratch" / "staged" / "s3" / "r1v-serve" / "run" / "sft" / "M0" / "model"
        assert (staged / "config.json").is_file() and engine.engine is not None


def test_logs_on_an_object_store_are_appended_a_segment_at_a_time(monkeypatch):
    """A long run's metrics on S3: each append rewrites at most one small segment (not the whole log, which
    made uploads grow with the square of the run), and readers, resumes and forced re-runs see one log."""
    import json

    from r1v_ray import append_log, store
    from r1v_ray.metrics import read_jsonl, truncate_after

    monkeypatch.setattr(append_log, "SEGMENT_BYTES", 256)
    monkeypatch.setattr(append_log, "_tails", {})
    with moto_s3("r1v-logs") as s3:
        log = "s3://r1v-logs/run/sft/metrics.jsonl"

        def append(step):
            append_log.append(log, json.dumps({"step": step, "loss": 1.0 / (step + 1)}) + "\n")

        for step in range(20):
            append(step)
        sizes = {o["Key"]: o["Size"] for o in s3.client().list_objects_v2(Bucket="r1v-logs")["Contents"]}
        assert len(sizes) > 3 and max(sizes.values()) <= 256, sizes
        append_log._tails.clear()  # a new process (a resumed run) continues the same log
        for step in range(20, 25):
            append(step)
        assert [r["step"] for r in read_jsonl(log)] == list(range(25))

        truncate_after(log, 9)  # a resume from step 9 drops the records it will redo
        append(10)
        assert [r["step"] for r in read_jsonl(log)] == [*range(10), 10]
        assert store.find("s3://r1v-logs/run", "metrics.jsonl") == [log]  # finders still see the log by name

        def crash(uri):
            raise RuntimeError("killed while deleting old segments")

        monkeypatch.setattr(append_log.store, "remove", crash)
        with pytest.raises(RuntimeError):
            truncate_after(log, 4)
        assert [r["step"] for r in read_jsonl(log)] == list(range(5))  # the rewrite had landed; leftovers skipped
        monkeypatch.undo()
        store.remove("s3://r1v-logs/run/sft")  # a forced re-run starts the stage over
        append(0)
        assert [r["step"] for r in read_jsonl(log)] == [0]
