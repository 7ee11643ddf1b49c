"""MLP initialization (paper 2.1): vision encoder + projector + substitute LLM, SFT in sub-stages.

    python jobs/mlp_init.py --config configs/demo/tiny.yaml [--set key=value ...] [--force]
    ray job submit --working-dir . -- python jobs/mlp_init.py --config ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.distill.recipes import training_data  # noqa: E402
from r1v_ray.runs import run_stage  # noqa: E402
from r1v_ray.runtime import init_ray, job_parser, load_job_config  # noqa: E402
from r1v_ray.sft.stages import mlp_init  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    cfg = load_job_config(args)
    init_ray()
    train_uri = training_data(cfg)  # scored / distilled data when those stages ran
    manifest = run_stage(cfg, "mlp_init", lambda run: mlp_init(cfg, run, train_uri), {"train": train_uri}, args.force)
    print(f"mlp_init: {manifest['outputs']['model']}")
