"""Model re-assembly (paper 2.1): the MLP-initialized projector onto the reasoning LLM.

python jobs/reassemble.py --config configs/demo/tiny.yaml [--force]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import reassemble  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    print(f"reassemble: {reassemble.run(load_job_config(args), args.force)['outputs']['model']}")
