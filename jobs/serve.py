"""Serve checkpoints of a run through an OpenAI-compatible API (Ray Serve, model multiplexing).

    R1V_SERVE_TOKEN=... python jobs/serve.py --config configs/demo/tiny.yaml [--model ID=PATH ...] [--detach]
    ray job submit --working-dir . -- python jobs/serve.py --config ...

Clients use the stock `openai` package: base_url=http://HOST:PORT/v1, api_key=the token.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.runtime import init_ray, job_parser, load_job_config  # noqa: E402
from r1v_ray.serve.app import build_app, discover_checkpoints, token_digest  # noqa: E402


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
    token = os.environ.get(cfg.serve.token_env)
    if not token:
        raise SystemExit(
            f"serve: set the bearer token in ${cfg.serve.token_env} (serve.token_env); it is never read from config"
        )
    from ray import serve

    init_ray()
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(models, cfg, token_digest(token)), name="r1v", route_prefix="/")
    print(
        f"serving {sorted(models)} at http://{cfg.serve.host}:{cfg.serve.port}/v1 "
        f"(bearer token from ${cfg.serve.token_env})",
        flush=True,
    )
    if not args.detach:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
