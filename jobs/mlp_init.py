"""MLP initialization (paper 2.1): vision encoder + projector + substitute LLM, SFT in sub-stages.

python jobs/mlp_init.py --config configs/demo/tiny.yaml [--set key=value ...] [--force]
ray job submit --working-dir . -- python jobs/mlp_init.py --config ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import mlp_init  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    print(f"mlp_init: {mlp_init.run(load_job_config(args), args.force)['outputs']['model']}")
