"""The whole pipeline in the paper's order: mlp_init, reassemble, distill, score, sft, grpo; then the report.

    python jobs/pipeline.py --config configs/demo/tiny.yaml        # the 2-core demo (tiny models, offline judge)
    python jobs/pipeline.py --config configs/paper/r1v-38b.yaml --only sft grpo
    ray job submit --working-dir . -- python jobs/pipeline.py --config ...
    python jobs/pipeline.py --config configs/paper/r1v-38b.yaml --dry-run   # the plan only; runs nothing
Finished stages are skipped, unfinished ones resume; --force re-runs the named stages from scratch.
Ends by printing the per-stage table (the shape of the paper's Table 2) and where the report is.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.ray_connect import init_ray  # noqa: E402
from r1v_ray.stages import STAGES, run_pipeline  # noqa: E402

if __name__ == "__main__":
    ap = job_parser(__doc__)
    ap.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages (in pipeline order)")
    ap.add_argument("--force-stage", nargs="+", choices=STAGES, default=[], help="re-run these stages from scratch")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit; runs nothing")
    args = ap.parse_args()
    cfg = load_job_config(args)
    if args.dry_run:
        from r1v_ray.plan import cluster_nodes, format_plan

        print(format_plan(cfg, cluster_nodes()))
        sys.exit(0)
    start = time.time()
    url = init_ray(dashboard=True)
    if url:
        print(f"[pipeline] Ray dashboard (while this runs): http://{url}")
    run_pipeline(cfg, force=list(STAGES) if args.force else args.force_stage, only=args.only)
    from r1v_ray.report import build_report
    from r1v_ray.report_stats import format_chance_table, format_stats_table

    written = build_report(cfg.run_dir)
    print(f"\n{format_stats_table(cfg.run_dir)}\n\n{format_chance_table(cfg.run_dir)}\n")
    print(f"pipeline finished in {(time.time() - start) / 60:.1f} min; run directory {cfg.run_dir}")
    print(f"report: {written.get('markdown', os.path.join(cfg.run_dir, 'report', 'report.md'))}")
    print(
        "dashboard: the URL above while a run is going; for a lasting one start a head "
        "(`ray start --head --dashboard-host 127.0.0.1`) and run with RAY_ADDRESS=auto; "
        "on a cluster: `ray dashboard cluster.yaml`"
    )
