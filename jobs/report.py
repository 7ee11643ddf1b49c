"""Turn a run directory into PNG plots and a Markdown summary (no Ray needed).

    python jobs/report.py --config configs/demo/tiny.yaml [--run-dir PATH] [--out DIR]
Writes RUN_DIR/report/{stages,sft_loss,grpo}.png and report.md, and prints the stage table
(mean ± std over runs, paired bootstrap CI to the stage before) and the per-task table with chance levels.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.report import build_report  # noqa: E402
from r1v_ray.report_stats import format_chance_table, format_stats_table  # noqa: E402

if __name__ == "__main__":
    ap = job_parser(__doc__)
    ap.add_argument("--run-dir", help="run directory (default: run_dir from the config)")
    ap.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    args = ap.parse_args()
    run_dir = args.run_dir or load_job_config(args).run_dir
    written = build_report(run_dir, args.out)
    print(format_stats_table(run_dir))
    print(format_chance_table(run_dir))
    print(f"report: {written['markdown']}")
    for path in written["plots"]:
        print(f"plot:   {path}")
