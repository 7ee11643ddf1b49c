"""Stage 1 and iterative SFT (paper 2.2): M0 on D, then M_t on D_rm(tau_t) ∪ E_{t-1}; each M_t evaluated.

    python jobs/iterative_sft.py --config configs/demo/tiny.yaml [--force]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.data.sources import dataset_uris  # noqa: E402
from r1v_ray.distill.recipes import redistill_hook, training_data  # noqa: E402
from r1v_ray.runs import run_stage  # noqa: E402
from r1v_ray.runtime import init_ray, job_parser, load_job_config, stage_output  # noqa: E402
from r1v_ray.sft.stages import iterative_sft  # noqa: E402

if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    cfg = load_job_config(args)
    init_ray()
    base = stage_output(cfg, "reassemble")
    _, test_uri = dataset_uris(cfg)
    train_uri = training_data(cfg)
    manifest = run_stage(cfg, "sft", lambda run: iterative_sft(cfg, run, base, train_uri, test_uri, redistill_hook(cfg, run)),
                         {"reassembled": base, "train": train_uri, "test": test_uri}, args.force)
    print("model        Pass@1")
    for row in manifest["metrics"]["table"]:
        print(f"{row['model']:<12} {row['pass@1']:.2f}")
