"""SFT data preparation (selection -> length filter -> `name/data`): no Ray, training replaced by a recorder.

A crash at any write point of the preparation, then a rerun, gives exactly the rows and rejected rows of
an uninterrupted run; an empty selection stops before any training worker starts.
"""

import os

import pytest

from r1v_ray.config import load_config
from r1v_ray.data import io
from r1v_ray.data.io import read_parquet
from r1v_ray.data.select import all_rows, subset
from r1v_ray.data.synthetic import write_split
from r1v_ray.sft import training_folder
from r1v_ray.stages.manifest import StageRun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(run_dir: str):
    # max_length 200 puts some synthetic rows over the limit: both outputs have rows.
    sets = [f"run_dir={run_dir}", "sft.max_length=200", "sft.global_batch_size=4", "sft.micro_batch_size=2"]
    return load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), sets)


@pytest.fixture
def no_training(monkeypatch):
    jobs = []

    def record(chain):
        for job in chain:
            jobs.append(job)
            os.makedirs(os.path.join(job.output_dir, "model"), exist_ok=True)
            open(os.path.join(job.output_dir, "model", "config.json"), "w").close()

    monkeypatch.setattr(training_folder, "run_sft", record)
    return jobs


def _prepared(run_dir: str) -> tuple[list, list]:
    out = os.path.join(run_dir, "sft", "M0")
    rows = read_parquet(os.path.join(out, "data")).to_pylist()
    rejected = sorted((r["id"], r["reason"]) for r in read_parquet(os.path.join(out, "rejected")).to_pylist())
    return rows, rejected


def test_a_crash_at_any_write_point_of_data_preparation_resumes_to_the_same_data(
    tiny_checkpoint, tmp_path, monkeypatch, no_training
):
    train_uri = str(tmp_path / "train")
    write_split(train_uri, 40, seed=4)
    clean_dir = str(tmp_path / "clean")
    cfg = _cfg(clean_dir)
    training_folder.train(cfg, StageRun(cfg, "sft"), "M0", tiny_checkpoint, all_rows(train_uri), 1e-3, ["projector"])
    clean_rows, clean_rejected = _prepared(clean_dir)
    assert clean_rows and clean_rejected and len(clean_rows) + len(clean_rejected) == 40

    writes = {"n": 0}
    original = io.pq.write_table

    def counting(*args, **kwargs):
        writes["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(io.pq, "write_table", counting)
    counted = StageRun(_cfg(str(tmp_path / "count")), "sft")
    training_folder.train(counted.cfg, counted, "M0", tiny_checkpoint, all_rows(train_uri), 1e-3, ["projector"])
    assert writes["n"] >= 2
    for crash_at in range(1, writes["n"] + 1):
        run_dir = str(tmp_path / f"crash{crash_at}")
        calls = {"n": 0}

        def failing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise OSError(f"killed at write {crash_at}")
            return original(*args, **kwargs)

        monkeypatch.setattr(io.pq, "write_table", failing)
        run = StageRun(_cfg(run_dir), "sft")
        with pytest.raises(OSError, match="killed"):
            training_folder.train(run.cfg, run, "M0", tiny_checkpoint, all_rows(train_uri), 1e-3, ["projector"])
        monkeypatch.setattr(io.pq, "write_table", original)
        training_folder.train(run.cfg, run, "M0", tiny_checkpoint, all_rows(train_uri), 1e-3, ["projector"])
        assert _prepared(run_dir) == (clean_rows, clean_rejected), f"crash at write {crash_at}"
    assert len(no_training) == 2 + writes["n"]  # every completed preparation went on to training


def test_an_empty_selection_stops_before_training_with_the_reason(tiny_checkpoint, tmp_path, no_training):
    """Regression: an empty SFT subset raised IndexError in every Ray Train worker, which then retried."""
    train_uri = str(tmp_path / "train")
    write_split(train_uri, 12, seed=4)
    cfg = _cfg(str(tmp_path / "run"))
    nothing = subset(train_uri, sources=["no/such/source"])
    with pytest.raises(ValueError, match=r"no training rows: source in \['no/such/source'\]"):
        training_folder.train(cfg, StageRun(cfg, "sft"), "M0", tiny_checkpoint, nothing, 1e-3, ["projector"])
    assert not no_training
