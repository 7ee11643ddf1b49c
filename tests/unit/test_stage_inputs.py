"""Which data a stage reads from the run directory: the newest output of the stages before it."""

from __future__ import annotations

import pyarrow as pa

from r1v_ray.config import load_config
from r1v_ray.data.io import write_parquet


def _cfg(tmp_path):
    for split in ("train", "test"):
        write_parquet(pa.table({"id": [f"{split}-{i}" for i in range(3)]}), str(tmp_path / split))
    sets = [f"run_dir={tmp_path / 'run'}", "data.source=parquet"]
    return load_config(None, sets + [f"data.train_path={tmp_path / 'train'}", f"data.test_path={tmp_path / 'test'}"])


def test_a_resubmitted_score_without_distillation_skips(tmp_path, monkeypatch):
    """Score without a finished distill stage scores the train split; resubmitted, it skips rather than
    reading its own output as its input (which stopped it with StageChanged)."""
    from r1v_ray.stages import score

    cfg, seen = _cfg(tmp_path), []

    def fake_score(cfg, run, data_uri):
        seen.append(data_uri)
        write_parquet(pa.table({"id": ["train-0"], "rm_score": [3]}), run.path_for("data"))
        return {"data": run.path_for("data")}, {"rows_out": 1}

    monkeypatch.setattr(score, "init_ray", lambda: None)
    monkeypatch.setattr(score, "body", fake_score)
    first = score.run(cfg)
    again = score.run(cfg)
    assert seen == [cfg.data.train_path]
    assert again["status"] == "complete" and again["inputs"] == first["inputs"]


def test_each_stage_reads_the_newest_data_of_the_stages_before_it(tmp_path):
    from r1v_ray.stages.inputs import newest_model, training_data
    from r1v_ray.stages.manifest import run_stage

    cfg = _cfg(tmp_path)
    assert training_data(cfg, "mlp_init") == cfg.data.train_path and newest_model(cfg) is None
    run_stage(cfg, "mlp_init", lambda run: ({"model": "projector"}, {}), {})
    run_stage(cfg, "reassemble", lambda run: ({"model": "reassembled"}, {}), {})
    assert newest_model(cfg) == "reassembled"  # what distillation generates with (self-distillation)
    assert training_data(cfg, "distill") == cfg.data.train_path
    run_stage(cfg, "distill", lambda run: ({"data": "distilled", "model": "reassembled"}, {}), {})
    assert training_data(cfg, "score") == training_data(cfg, "sft") == "distilled"
    run_stage(cfg, "score", lambda run: ({"data": "scored"}, {}), {})
    assert training_data(cfg, "score") == "distilled"  # never its own output
    assert [training_data(cfg, s) for s in ("sft", "grpo")] == ["scored"] * 2
    assert training_data(cfg, "mlp_init") == cfg.data.train_path  # it runs before any stage writes data
    run_stage(cfg, "sft", lambda run: ({"model": "M2"}, {}), {})
    assert newest_model(cfg) == "M2"  # a re-distillation after SFT generates with its model
