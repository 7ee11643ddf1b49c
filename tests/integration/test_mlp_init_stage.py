"""MLP-init in the paper's order: it runs first, before any RM score exists, so a sub-stage that picks its
subset by score picks it by the judge's query assessment, which the stage runs on the canonical data."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_score_selected_sub_stages_train_on_the_assessed_rows(tmp_path, monkeypatch):
    import ray

    from r1v_ray.config import ConfigError, load_config
    from r1v_ray.data.io import read_parquet
    from r1v_ray.stages import mlp_init

    sets = [
        f"run_dir={tmp_path / 'run'}",
        "model.source=tiny",
        "data.synthetic.n_train=12",
        "data.synthetic.n_test=4",
        "judge.num_workers=1",
        "rollout.backend=hf",
        "eval.runs=1",
        "eval.max_tokens=8",
    ]
    stages = "[{name: full, learning_rate: 0.001}, {name: clear, learning_rate: 0.001, score_column: s_v_raw, min_score: 0.3}]"
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [*sets, f"sft.mlp_init_stages={stages}"])
    with pytest.raises(ConfigError, match=r"sft.mlp_init_stages\[1\].score_column='rm_score' does not exist"):
        load_config(None, ["sft.mlp_init_stages=[{name: a}, {name: b, score_column: rm_score, min_score: 4}]"])

    trained = {}

    def fake_train_chain(cfg, run, runs):
        for r in runs:
            r.selection.write(str(tmp_path / r.name))
            trained[r.name] = read_parquet(str(tmp_path / r.name))
        return [{"model": runs[0].init} for _ in runs]  # the assembled model stands in for each

    monkeypatch.setattr(mlp_init, "train_chain", fake_train_chain)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        manifest = mlp_init.run(cfg)
    finally:
        ray.shutdown()
    assert manifest["status"] == "complete"
    full, clear = trained["full"], trained["clear"]
    assert full.num_rows == 12 and "s_v_raw" not in full.column_names  # the canonical rows, as they are
    assessed = read_parquet(str(tmp_path / "run" / "mlp_init" / "assess" / "assessed"))
    expected = sorted(
        i for i, s in zip(assessed.column("id").to_pylist(), assessed.column("s_v_raw").to_pylist()) if s >= 0.3
    )
    assert 0 < len(expected) and sorted(clear.column("id").to_pylist()) == expected
    assert manifest["metrics"]["assess"]["rows_in"] == 12
