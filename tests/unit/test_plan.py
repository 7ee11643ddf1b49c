"""`jobs/pipeline.py --dry-run`: the plan of the paper config in seconds, nothing written; bundle fitting."""

import os
import subprocess
import sys

from r1v_ray.plan import fits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dry_run_prints_the_paper_plan_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "pipeline.py"), "--config",
         os.path.join(ROOT, "configs", "paper", "r1v-38b.yaml"), "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    stages = [line.split()[1] for line in out.splitlines() if line[:1].isdigit()]
    assert stages == ["mlp_init", "reassemble", "distill", "score", "sft", "grpo"]
    assert "writes s3://my-bucket/r1v-runs/r1v-38b/grpo/checkpoints" in out
    assert "train: 64 bundles, {'CPU': 64.0, 'GPU': 64.0, 'learner': 64.0}" in out
    assert list(tmp_path.iterdir()) == []  # no local `s3:` folder, no synthetic data


def test_a_bundle_no_node_can_hold_and_a_total_beyond_the_cluster_are_named():
    nodes = [{"CPU": 8, "GPU": 8, "learner": 8}, {"CPU": 8, "GPU": 4, "rollout": 1}]
    assert fits([{"CPU": 1, "GPU": 1, "learner": 1}] * 8, nodes) is None
    assert "no node has" in fits([{"CPU": 1, "GPU": 8, "rollout": 1}], nodes)
    assert "needs {'learner': 9}" in fits([{"CPU": 1, "learner": 1}] * 9, nodes)
