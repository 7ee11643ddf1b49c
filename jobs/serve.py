"""Serve checkpoints of a run through an OpenAI-compatible API (Ray Serve, model multiplexing).

    R1V_SERVE_TOKEN=... python jobs/serve.py --config configs/demo/tiny.yaml [--model ID=PATH ...] [--detach]
    ray job submit --working-dir . -- python jobs/serve.py --config ...

Clients use the stock `openai` package: base_url=http://HOST:PORT/v1 (serve.host, serve.port: the
ingress replica itself, with Ray Serve's direct ingress), api_key=the token.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.job_cli import job_parser, load_job_config  # noqa: E402
from r1v_ray.ray_connect import init_ray  # noqa: E402
from r1v_ray.serve.app import build_app, discover_checkpoints, token_digest  # noqa: E402
from r1v_ray.serve.endpoint import app_url, proxy_port, start_serve  # noqa: E402


def main() -> None:
    ap = job_parser(__doc__)
    ap.add_argument("--model", action="append", default=[], metavar="ID=PATH", help="serve this checkpoint as ID")
    ap.add_argument("--detach", action="store_true", help="return once the app is up (it keeps running on the cluster)")
    args = ap.parse_args()
    cfg = load_job_config(args)
    models = (
        dict(m.split("=", 1) for m in args.model)
        if args.model
        else (cfg.serve.models or discover_checkpoints(cfg.run_dir))
    )
    if not models:
        raise SystemExit(
            f"serve: no R1V checkpoint under run_dir {cfg.run_dir}; pass --model ID=PATH or set serve.models"
        )
    token = os.environ.get(cfg.serve.token_env)
    if not token:
        raise SystemExit(
            f"serve: set the bearer token in ${cfg.serve.token_env} (serve.token_env); it is never read from config"
        )
    from ray import serve

    init_ray()
    start_serve(cfg.serve)
    serve.run(build_app(models, cfg, token_digest(token)), name="r1v", route_prefix="/")
    print(
        f"serving {sorted(models)} at {app_url('r1v', '/', cfg.serve)}/v1 (bearer token from ${cfg.serve.token_env}; "
        f"Serve's HTTP proxy, one hop more: port {proxy_port(cfg.serve)})",
        flush=True,
    )
    if not args.detach:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
