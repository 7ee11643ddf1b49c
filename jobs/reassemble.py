"""Model re-assembly (paper 2.1): the MLP-initialized projector onto the reasoning LLM.

    python jobs/reassemble.py --config configs/demo/tiny.yaml [--force]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.runs import run_stage  # noqa: E402
from r1v_ray.runtime import job_parser, load_job_config, stage_output  # noqa: E402
from r1v_ray.sft.stages import reassemble_stage  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    cfg = load_job_config(args)
    source = stage_output(cfg, "mlp_init")
    manifest = run_stage(cfg, "reassemble", lambda run: reassemble_stage(cfg, run, source), {"mlp_init": source}, args.force)
    print(f"reassemble: {manifest['outputs']['model']}")
