"""Where clients connect: the ingress replica itself, with Ray Serve's direct ingress.

Behind Serve's HTTP proxy every request, and every piece of a stream, crosses one process hop
more than behind vLLM's own server (client -> proxy -> replica -> proxy -> client); on a small
host that hop was most of the gap (benchmarks/serve.py: 0.63x the throughput, 2.1x the first
token). Ray Serve's own high-throughput mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`) removes it: with
direct ingress the ingress replica serves HTTP on its own port, user code runs on the replica's
main event loop (a request on the same loop as the engine's output stream, as in vLLM's server),
request logs are buffered, and replicas call each other over gRPC. Serve reads these settings
from the environment when its processes start, so the controller gets them through
`serve.start(controller_options=...)` and the replicas through their runtime_env.

Ports: the first ingress replica takes `serve.port` (the OpenAI API), further apps' ingress
replicas the next ones (up to `serve.port + INGRESS_PORTS - 1`), and Serve's own HTTP proxy
(every app by route prefix, one hop more) listens on `serve.port + INGRESS_PORTS`.
"""

from __future__ import annotations

import ipaddress
import time

from r1v_ray.config import ServeConfig

INGRESS_PORTS = 8


def proxy_port(cfg: ServeConfig) -> int:
    return cfg.port + INGRESS_PORTS


def free_base_port(host: str = "127.0.0.1") -> int:
    """A serve.port with its ingress ports and the proxy's port free right now (tests, benchmarks)."""
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + INGRESS_PORTS < 65536 and all(_port_free(host, base + i) for i in range(1, INGRESS_PORTS + 1)):
            return base
    raise RuntimeError(f"no block of {INGRESS_PORTS + 1} free ports found on {host}")


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve_env(cfg: ServeConfig) -> dict[str, str]:
    """Environment for Serve's controller and this app's replicas."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(cfg.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(cfg.port + INGRESS_PORTS),
        # Serve waits this long for an external load balancer to drop a stopping replica: there is none.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def start_serve(cfg: ServeConfig) -> None:
    """Start Serve for r1v_ray's apps (a Serve instance already running keeps its own settings:
    then `app_url` names its proxy)."""
    from ray import serve

    serve.start(
        http_options={"host": cfg.host, "port": proxy_port(cfg)},
        controller_options={"runtime_env": {"env_vars": serve_env(cfg)}},
    )


def app_url(app_name: str, route_prefix: str, cfg: ServeConfig, timeout_s: float = 60.0) -> str:
    """The base URL (without /v1) clients use for the app deployed as `app_name` at `route_prefix`:
    its ingress replica's own port, or Serve's proxy where direct ingress is off (a Serve instance
    started before, with other settings)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    prefix = route_prefix.rstrip("/")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = [
            g for g in ray.get(controller.get_target_groups.remote(app_name)) if g.protocol == RequestProtocol.HTTP
        ]
        for group in groups:
            # Until the controller has the replica's port it lists the proxies for the app.
            direct = [t for t in group.targets if group.app_name == app_name and t.port != proxy_port(cfg)]
            if direct:
                return _url(direct[0], cfg, prefix)
        if groups and all(g.app_name == "" and g.targets for g in groups):  # direct ingress off: the proxies
            return _url(groups[0].targets[0], cfg, prefix)
        time.sleep(0.2)
    raise RuntimeError(f"Serve reports no HTTP endpoint for app '{app_name}' after {timeout_s}s")


def _url(target, cfg: ServeConfig, prefix: str) -> str:
    host = cfg.host if _is_loopback(cfg.host) else target.ip
    return f"http://{host}:{target.port}{prefix}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
