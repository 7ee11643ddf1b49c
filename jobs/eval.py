"""Evaluate a checkpoint: Pass@1 over k sampled runs, with per-category and per-source tables.

python jobs/eval.py --config configs/demo/tiny.yaml --checkpoint PATH [--data URI] [--out DIR]
ray job submit --working-dir . -- python jobs/eval.py --config ... --checkpoint ...
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.stages import eval as evaluation  # noqa: E402


def main() -> None:
    ap = job_parser(__doc__)
    ap.add_argument("--checkpoint", required=True, help="HF checkpoint directory saved by r1v_ray")
    ap.add_argument("--data", help="canonical Parquet benchmark (default: data.test_path or the synthetic test split)")
    ap.add_argument("--out", help="output folder (default: RUN_DIR/eval/NAME)")
    ap.add_argument("--name", default=None, help="name of this evaluation (default: the checkpoint's folder name)")
    args = ap.parse_args()
    cfg = load_job_config(args)
    name = args.name or os.path.basename(os.path.normpath(args.checkpoint))
    report = evaluation.run(cfg, args.checkpoint, args.data, args.out, name)
    o = report["overall"]
    print(
        f"{name}: Pass@1 {o['pass@1_mean']:.2f} ± {o['pass@1_std']:.2f} over {report['runs']} runs "
        f"(n={o['n']}, rejected={report['rejected']})"
    )


if __name__ == "__main__":
    main()
