"""Stage 1 and iterative SFT (paper 2.2): M0 on D, then M_t on D_rm(tau_t) ∪ E_{t-1}; each M_t evaluated.

    python jobs/iterative_sft.py --config configs/demo/tiny.yaml [--force]
    ray job submit --working-dir . -- python jobs/iterative_sft.py --config ...
With distill.before_iterations, the data is re-distilled with M_{t-1} and re-scored before iteration t.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.report_stats import format_stats_table  # noqa: E402
from r1v_ray.stages import sft  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    cfg = load_job_config(args)
    sft.run(cfg, args.force)
    print(format_stats_table(cfg.run_dir))  # mean ± std over runs, paired 95% CI to the model before
