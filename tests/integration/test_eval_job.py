"""jobs/eval.py on a tiny checkpoint and the synthetic test split writes eval.json with k runs."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_eval_job_writes_report(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "jobs", "eval.py"),
        "--config",
        os.path.join(ROOT, "configs", "demo", "tiny.yaml"),
        "--checkpoint",
        tiny_checkpoint,
        "--name",
        "tiny",
        "--set",
        f"run_dir={run_dir}",
        "--set",
        "data.synthetic.n_test=15",
        "--set",
        "eval.runs=3",
        "--set",
        "eval.max_tokens=24",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env["VLLM_CACHE_ROOT"] = str(tmp_path / "vllm")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((run_dir / "eval" / "tiny" / "eval.json").read_text())
    assert len(report["overall"]["runs"]) == 3 and report["overall"]["n"] == 15
    assert "pass@1_mean" in report["overall"] and report["rejected"] == 0
    assert set(report["by_category"]) == {"shape_kind", "count_color", "tallest_bar", "missing_angle", "sum_digits"}
    assert (run_dir / "eval" / "tiny" / "eval.md").read_text().startswith("# tiny")
    per_row = [json.loads(line) for line in (run_dir / "eval" / "tiny" / "per_row.jsonl").read_text().splitlines()]
    assert len(per_row) == 15 and all(len(r["correct"]) == 3 for r in per_row)  # each row's score in each run
    assert [100 * sum(r["correct"][k] for r in per_row) / 15 for k in range(3)] == pytest.approx(
        report["overall"]["runs"], abs=1e-3
    )
    assert "Pass@1" in proc.stdout


def test_error_set_rides_along_with_an_evaluation(tiny_checkpoint, tmp_path):
    """One engine pass for M's evaluation (k sampled runs) and the greedy error-set pass over the training rows
    (n = 1; one engine batch mixes both, the next holds training rows only): every row of each reaches its own consumer, ids may repeat across."""
    import ray

    from r1v_ray.config import load_config
    from r1v_ray.data.io import write_parquet
    from r1v_ray.data.schema import canonical_table
    from r1v_ray.data.synthetic import make_row
    from r1v_ray.eval.evaluate import run_eval
    from r1v_ray.run_dir import ERROR_IDS
    from r1v_ray.sft.error_set import ErrorSetPass, error_set

    test, train = str(tmp_path / "test"), str(tmp_path / "train")
    test_rows = [make_row(0, "test", i) for i in range(7)]
    test_rows[6]["image"] = b"not an image"  # rejected by the engine: wrong in Pass@1, not left out
    write_parquet(canonical_table(test_rows), test)
    rows = [make_row(0, "train", i) for i in range(40)]
    rows[0]["id"] = "synthetic-test-0000000"  # the same id as a test row: the two passes must not mix it up
    write_parquet(canonical_table(rows), train)
    cfg = load_config(
        os.path.join(ROOT, "configs", "demo", "tiny.yaml"),
        [
            "eval.runs=2",
            "eval.max_tokens=16",
            "sft.error_set_max_tokens=16",
            "rollout.batch_size=16",
            "rollout.max_model_len=512",
        ],
    )
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        errors = ErrorSetPass(cfg, train)
        report = run_eval(cfg, tiny_checkpoint, test, str(tmp_path / "eval"), "M", errors.side_pass())
    finally:
        ray.shutdown()
    assert report["overall"]["n"] == 7 and len(report["overall"]["runs"]) == 2 and report["rejected"] == 1
    assert report["overall"]["rejected"] == 1 and report["scored"] == 6
    assert errors.generated == 40 and not errors.rejected
    errors.save(str(tmp_path / "M1"))
    path, stats = error_set(str(tmp_path / "M1"), train)
    assert stats["generated"] == 40 and stats["wrong"] == len(errors.wrong) > 0  # a random model is mostly wrong
    assert os.path.exists(tmp_path / "M1" / ERROR_IDS)
    from r1v_ray.data.io import read_parquet

    assert sorted(read_parquet(path).column("id").to_pylist()) == sorted(errors.wrong)
