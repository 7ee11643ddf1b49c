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
