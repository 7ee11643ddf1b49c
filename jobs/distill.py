"""Adaptive-length CoT distillation (paper 2.3): QDAM + VTIA scores, DRLC penalties, self-distillation.

    python jobs/distill.py --config configs/demo/tiny.yaml [--model CHECKPOINT] [--force]
    ray job submit --working-dir . -- python jobs/distill.py --config ...
Streams the training set through the judge and the rollout engine; writes RUN_DIR/distill/data
(rows plus scores, penalty, think, response, verdict) and RUN_DIR/distill/rejected*.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import distill  # noqa: E402

if __name__ == "__main__":
    ap = job_parser(__doc__)
    ap.add_argument("--model", help="checkpoint that generates (default: distill.model or the newest stage's model)")
    args = ap.parse_args()
    cfg = load_job_config(args)
    cfg.distill.model = args.model or cfg.distill.model
    m = distill.run(cfg, args.force)["metrics"]
    print(
        f"distill: {m['rows_out']} rows out, {m['rejected']} rejected, {m['revised']} revised, "
        f"penalty/length correlation {m['penalty_length_correlation']}, judge calls {m['judge_calls']} "
        f"(cache hits {m['judge_cache_hits']}, retries {m['judge_retries']}), cost ${m['judge_cost_usd']:.4f}"
    )
