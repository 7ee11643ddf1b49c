"""Reward-model scoring (paper 2.2): RM(x) in {0..5} for every sample, by the judge's rubric.

    python jobs/score.py --config configs/demo/tiny.yaml [--data URI] [--force]
    ray job submit --working-dir . -- python jobs/score.py --config ...
Scores the distilled data (or the canonical train split when distillation has not run) into
RUN_DIR/score/data, which iterative SFT (D_rm(tau)) and GRPO then train on.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.distill.recipes import score_stage, training_data  # noqa: E402
from r1v_ray.runs import StageRun, run_stage  # noqa: E402
from r1v_ray.runtime import init_ray, job_parser, load_job_config  # noqa: E402

if __name__ == "__main__":
    ap = job_parser(__doc__)
    ap.add_argument("--data", help="canonical Parquet dataset to score (default: the distilled data)")
    args = ap.parse_args()
    cfg = load_job_config(args)
    init_ray()
    distilled = StageRun(cfg, "distill")
    data = args.data or (distilled.manifest["outputs"]["data"] if distilled.complete else training_data(cfg))
    manifest = run_stage(cfg, "score", lambda run: score_stage(cfg, run, data), {"data": data}, args.force)
    m = manifest["metrics"]
    print(f"score: {m['rows_out']} rows scored, {m['rejected']} rejected; RM histogram {m['histogram']}")
