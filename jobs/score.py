"""Reward-model scoring (paper 2.2): RM(x) in {0..5} for every sample, by the judge's rubric.

    python jobs/score.py --config configs/demo/tiny.yaml [--data URI] [--force]
    ray job submit --working-dir . -- python jobs/score.py --config ...
Scores the distilled data (or the canonical train split when distillation has not run) into
RUN_DIR/score/data, which iterative SFT (D_rm(tau)) and GRPO then train on.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import score  # noqa: E402

if __name__ == "__main__":
    ap = job_parser(__doc__)
    ap.add_argument("--data", help="canonical Parquet dataset to score (default: the distilled data)")
    args = ap.parse_args()
    m = score.run(load_job_config(args), args.force, args.data)["metrics"]
    print(f"score: {m['rows_out']} rows scored, {m['rejected']} rejected; RM histogram {m['histogram']}")
