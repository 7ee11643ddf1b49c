"""GRPO (paper 2.2, stage 3): rollout actors, reward actors, DeepSpeed learners, weight sync.

    python jobs/grpo.py --config configs/demo/tiny.yaml [--force]
    ray job submit --working-dir . -- python jobs/grpo.py --config ...
Starts from the iterative-SFT model; trains on D_rm(grpo.tau); resumes from its last checkpoint;
ends with the Pass@1 evaluation every SFT model gets.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import grpo  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    manifest = grpo.run(load_job_config(args), args.force)
    print("step  held-out reward")
    for point in manifest["metrics"]["heldout"]:
        print(f"{point['step']:>4}  {point['heldout_reward']:.3f}")
    print(f"GRPO model Pass@1 {manifest['metrics']['eval_pass1']:.2f}")
