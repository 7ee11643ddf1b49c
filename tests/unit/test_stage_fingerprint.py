"""A complete stage is skipped only while its config and inputs are what it ran with."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from r1v_ray.config import load_config
from r1v_ray.data.io import write_parquet
from r1v_ray.stages.manifest import run_stage


def _cfg(run_dir, *overrides):
    return load_config(None, [f"run_dir={run_dir}", *overrides])


def _body(calls):
    def body(run):
        calls.append(run.stage)
        return {"data": run.path_for("data")}, {}

    return body


def _data(path, n):
    write_parquet(pa.table({"id": [str(i) for i in range(n)]}), str(path))
    return str(path)


def test_changed_config_or_input_stops_with_what_changed(tmp_path):
    run_dir, calls = tmp_path / "run", []
    data = _data(tmp_path / "in", 5)
    run_stage(_cfg(run_dir), "distill", _body(calls), {"train": data})
    run_stage(_cfg(run_dir), "distill", _body(calls), {"train": data})
    assert calls == ["distill"]  # unchanged: skipped

    with pytest.raises(RuntimeError, match=r"(?s)distill\.alpha: 0\.7 -> 0\.9.*--force-stage distill"):
        run_stage(_cfg(run_dir, "distill.alpha=0.9"), "distill", _body(calls), {"train": data})
    _data(tmp_path / "in", 7)  # the input dataset was replaced
    with pytest.raises(RuntimeError, match=r"input 'train'.*\"rows\": 5.*\"rows\": 7"):
        run_stage(_cfg(run_dir), "distill", _body(calls), {"train": data})
    assert calls == ["distill"]

    run_stage(_cfg(run_dir), "distill", _body(calls), {"train": data}, force=True)  # --force redoes it
    assert calls == ["distill", "distill"]
    run_stage(_cfg(run_dir), "distill", _body(calls), {"train": data})
    assert calls == ["distill", "distill"]


def test_what_does_not_change_results_does_not_stop_a_skip(tmp_path):
    run_dir, calls = tmp_path / "run", []
    data = _data(run_dir / "data" / "train", 4)  # an input inside the run directory
    run_stage(_cfg(run_dir), "score", _body(calls), {"data": data})
    # The same run directory spelled another way, the key in another variable, more judge workers,
    # another stage's settings: the scores would be the same.
    spelled = os.path.join(str(tmp_path), ".", "run") + "/"
    other = _cfg(spelled, "judge.api_key_env=OTHER_KEY", "judge.num_workers=7", "grpo.steps=3", "distill.alpha=0.1")
    run_stage(other, "score", _body(calls), {"data": os.path.join(spelled, "data", "train")})
    assert calls == ["score"]
    with pytest.raises(RuntimeError, match=r"judge\.model: \"gpt-4o\" -> \"gpt-4.1\""):
        run_stage(_cfg(run_dir, "judge.model=gpt-4.1"), "score", _body(calls), {"data": data})


def test_a_password_in_a_config_url_never_reaches_the_manifest(tmp_path):
    from r1v_ray.config import load_config
    from r1v_ray.stages.manifest import StageRun

    cfg = load_config(None, [f"run_dir={tmp_path}", "judge.base_url=https://user:s3cret@judge.example/v1"])
    run = StageRun(cfg, "score")
    run.start({})
    text = open(run.path).read()
    assert "s3cret" not in text and "[redacted]@judge.example" in text
