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
        sys.executable, os.path.join(ROOT, "jobs", "eval.py"), "--config", os.path.join(ROOT, "configs", "demo", "tiny.yaml"),
        "--checkpoint", tiny_checkpoint, "--name", "tiny", "--set", f"run_dir={run_dir}",
        "--set", "data.synthetic.n_test=15", "--set", "eval.runs=3", "--set", "eval.max_tokens=24",
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
    assert "Pass@1" in proc.stdout
