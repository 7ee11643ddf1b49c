"""Serving: r1v_ray's Serve app against vLLM's own OpenAI server, same checkpoint, same load, one run.

Both servers are up at once; each round sends the same load to each in turn (non-streaming, then
streaming with usage), so drift on a shared machine hits both alike. Prints medians over the
rounds with their range, and the ratios r1v_ray / vLLM (targets: throughput >= 0.9x, first
streamed token <= 1.5x). Clients reach r1v_ray's app on its ingress replica's own port (Ray
Serve's direct ingress, `r1v_ray.serve.endpoint`); --via-proxy also measures the same app through
Serve's HTTP proxy, and --ray-serve-llm `ray.serve.llm` (also with direct ingress).

--engines instead compares the two vLLM engine paths in-process on one batch of requests known up
front (a GRPO rollout, a Ray Data block): the batch engine (`LLM.generate` over the list) against
the async engine (every request submitted at once): the batch path stays where it is faster.

    .venv/bin/python benchmarks/serve.py [--checkpoint runs/demo/sft/model] [--requests 64] [--concurrency 16]
        [--max-tokens 64] [--rounds 3] [--via-proxy] [--ray-serve-llm] [--engines]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.data.synthetic import (
    corpus,  # noqa: E402
    make_row,  # noqa: E402
)
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402

TOKEN = "bench-token-not-a-secret"
MODEL = "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(n: int, max_tokens: int, temperature: float) -> list[dict]:
    out = []
    for i in range(n):
        row = make_row(0, "bench", i)
        url = "data:image/png;base64," + base64.b64encode(row["image"]).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": row["question"]}]
        messages = [{"role": "user", "content": content}]
        out.append({"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": temperature})
    return out


async def one(client: httpx.AsyncClient, url: str, body: dict, stream: bool) -> tuple[float, float | None, int]:
    """(latency, first content token latency or None, completion tokens) of one request."""
    start = time.perf_counter()
    if not stream:
        r = await client.post(url, json=body)
        r.raise_for_status()
        return time.perf_counter() - start, None, r.json()["usage"]["completion_tokens"]
    first, tokens = None, 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if first is None and (delta.get("content") or delta.get("reasoning_content")):
                first = time.perf_counter() - start
    return time.perf_counter() - start, first, tokens


async def load(base_url: str, reqs: list[dict], concurrency: int, stream: bool) -> dict:
    url = f"{base_url}/chat/completions"
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=600, limits=limits) as client:

        async def gated(body):
            async with gate:
                return await one(client, url, body, stream)

        start = time.perf_counter()
        results = await asyncio.gather(*[gated(b) for b in reqs])
        wall = time.perf_counter() - start
    firsts = [f for _, f, _ in results if f is not None]
    return {
        "tok_s": sum(t for _, _, t in results) / wall,
        "req_s": len(reqs) / wall,
        "p50_s": statistics.median(lat for lat, _, _ in results),
        "ttft_s": statistics.median(firsts) if firsts else None,
    }


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url} not up after {timeout_s}s")


def start_vllm_server(ckpt: str, max_model_len: int, log_path: str) -> tuple[str, subprocess.Popen]:
    """vLLM's own OpenAI server, as a user would start it on this checkpoint (CPU)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", ckpt]
    cmd += [
        "--served-model-name",
        MODEL,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(max_model_len),
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--api-key", TOKEN]
    cmd += ["--limit-mm-per-prompt", '{"image":1,"video":0}', "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    return f"http://127.0.0.1:{port}/v1", proc


def start_r1v_serve(ckpt: str, max_model_len: int, cfg) -> str:
    from ray import serve

    from r1v_ray.config import RolloutConfig
    from r1v_ray.serve.app import build_app, token_digest
    from r1v_ray.serve.endpoint import app_url, free_base_port, start_serve

    cfg.model.dtype = "float32"
    cfg.rollout = RolloutConfig(
        backend="vllm", device="cpu", num_workers=1, max_model_len=max_model_len, cpu_kvcache_gib=1
    )
    cfg.rollout.max_images_per_prompt = 1  # as the vLLM server's --limit-mm-per-prompt
    cfg.serve.port = free_base_port()
    start_serve(cfg.serve)
    serve.run(build_app({MODEL: ckpt}, cfg, token_digest(TOKEN)), name="r1v", route_prefix="/")
    return app_url("r1v", "/", cfg.serve) + "/v1"


def start_ray_serve_llm(ckpt: str, max_model_len: int, cfg) -> str:
    """ray.serve.llm's OpenAI app on CPU (platform notes: accelerator kind cpu, CPU bundles), in the
    same Serve instance as r1v_ray's app (so with direct ingress too), under /rsl."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from r1v_ray.serve.endpoint import app_url, serve_env

    config = LLMConfig(
        model_loading_config={"model_id": MODEL, "model_source": ckpt},
        accelerator_config={"kind": "cpu"},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        engine_kwargs={
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": 1, "video": 0},
        },
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", **serve_env(cfg.serve)}},
    )
    serve.run(build_openai_app({"llm_configs": [config]}), name="ray-serve-llm", route_prefix="/rsl")
    return app_url("ray-serve-llm", "/rsl", cfg.serve) + "/v1"


def engine_rounds(ckpt: str, args) -> None:
    """Batch engine vs async engine on the same requests, all known up front; rounds alternate."""
    from benchmarks.rollout import requests
    from r1v_ray.config import RolloutConfig
    from r1v_ray.engines.rollout.vllm_async import AsyncVLLMEngine
    from r1v_ray.engines.rollout.vllm_engine import VLLMEngine

    cfg = RolloutConfig(backend="vllm", device="cpu", max_model_len=args.max_model_len, cpu_kvcache_gib=1)
    reqs = requests(args.requests, 1, args.max_tokens)
    batch = VLLMEngine(ckpt, cfg, "float32")
    loop = asyncio.new_event_loop()
    async_engine = loop.run_until_complete(asyncio.to_thread(AsyncVLLMEngine, ckpt, cfg, "float32"))

    def run_batch() -> float:
        start = time.perf_counter()
        out = batch.generate(reqs)
        return sum(len(c.token_ids) for r in out for c in r.completions) / (time.perf_counter() - start)

    async def run_async() -> float:
        start = time.perf_counter()
        out = await asyncio.gather(*[async_engine.generate(r) for r in reqs])
        return sum(len(c.token_ids) for r in out for c in r.completions) / (time.perf_counter() - start)

    run_batch(), loop.run_until_complete(run_async())  # warm-up
    results = {"batch": [], "async": []}
    for _ in range(args.rounds):
        results["batch"].append({"tok_s": run_batch()})
        results["async"].append({"tok_s": loop.run_until_complete(run_async())})
    async_engine.shutdown()
    print(f"engines, in-process: {args.requests} image requests at once, max_tokens {args.max_tokens}, T=1.0")
    for name in results:
        print("  " + summarize(f"{name} engine", results[name], "tok_s", "tok/s")[1])
    per_round = [b["tok_s"] / a["tok_s"] for b, a in zip(results["batch"], results["async"])]
    med = statistics.median(r["tok_s"] for r in results["batch"]) / statistics.median(
        r["tok_s"] for r in results["async"]
    )
    print(
        f"    batch / async: {med:.2f}x; per round median {statistics.median(per_round):.2f}x "
        f"(range {min(per_round):.2f} - {max(per_round):.2f})"
    )


def summarize(name: str, runs: list[dict], key: str, unit: str) -> tuple[float, str]:
    values = [r[key] for r in runs]
    med = statistics.median(values)
    return med, f"{name:<16} {med:9.3f} {unit}  (range {min(values):.3f} - {max(values):.3f}, {len(values)} rounds)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="an R1V checkpoint; default: a tiny one built here")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--ray-serve-llm", action="store_true", help="also ray.serve.llm (a third server)")
    ap.add_argument("--via-proxy", action="store_true", help="also r1v_ray's app through Serve's HTTP proxy")
    ap.add_argument("--engines", action="store_true", help="only the batch vs async engine comparison")
    args = ap.parse_args()
    import ray

    from r1v_ray.config import R1VConfig
    from r1v_ray.serve.endpoint import proxy_port

    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(work, "vllm"))
        ckpt = args.checkpoint or write_tiny_checkpoint(work, corpus)
        if args.engines:
            engine_rounds(ckpt, args)
            return
        vllm_url, proc = start_vllm_server(ckpt, args.max_model_len, os.path.join(work, "vllm_server.log"))
        try:
            ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
            cfg = R1VConfig()
            servers = {"vllm-server": vllm_url, "r1v_ray-serve": start_r1v_serve(ckpt, args.max_model_len, cfg)}
            if args.via_proxy:  # the same app behind Serve's HTTP proxy: what direct ingress saves
                servers["r1v_ray-via-proxy"] = f"http://127.0.0.1:{proxy_port(cfg.serve)}/v1"
            if args.ray_serve_llm:
                servers["ray.serve.llm"] = start_ray_serve_llm(ckpt, args.max_model_len, cfg)
            logging.getLogger("httpx").setLevel(logging.WARNING)  # ray.serve.llm turns on INFO logs
            for url in servers.values():
                wait_ready(url, proc)
            run_rounds(args, servers, server_processes(servers, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            ray.shutdown()


def server_processes(servers: dict[str, str], vllm_pid: int) -> dict[str, list[int]]:
    """Each server's own processes (their children too: vLLM's engine core): vLLM's server; the
    Serve replicas of an app (and, through the proxy, Serve's proxy)."""
    import psutil

    def named(part: str) -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"]) if any(part in c for c in p.info["cmdline"] or [])]

    out = {"vllm-server": [vllm_pid], "r1v_ray-serve": named("ServeReplica:r1v:")}
    out["r1v_ray-via-proxy"] = out["r1v_ray-serve"] + named("ProxyActor")
    out["ray.serve.llm"] = named("ServeReplica:ray-serve-llm:")
    return {name: out[name] for name in servers}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children: what a request costs, whatever
    else runs on the machine."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def measured_load(url: str, reqs: list[dict], concurrency: int, stream: bool, pids: list[int]) -> dict:
    before = cpu_seconds(pids)
    result = asyncio.run(load(url, reqs, concurrency, stream))
    result["cpu_ms"] = 1000 * (cpu_seconds(pids) - before) / len(reqs)
    return result


def run_rounds(args, servers: dict[str, str], processes: dict[str, list[int]]) -> None:
    reqs = bodies(args.requests, args.max_tokens, args.temperature)
    for url in servers.values():  # warm-up: engines compiled, caches and connections made
        asyncio.run(load(url, reqs[: args.concurrency], args.concurrency, stream=False))
    runs: dict[tuple[str, bool], list[dict]] = {(s, st): [] for s in servers for st in (False, True)}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for stream in (False, True):
            for name, url in servers.items():
                runs[(name, stream)].append(measured_load(url, reqs, args.concurrency, stream, processes[name]))
    print(
        f"load: {args.requests} image requests, {args.concurrency} in flight, max_tokens {args.max_tokens}, "
        f"T={args.temperature}, {args.rounds} rounds, {os.cpu_count()} CPUs (shared machine: see the ranges; "
        f"1-min load average {load_before:.1f} before the rounds, {os.getloadavg()[0]:.1f} after)"
    )
    base = "vllm-server"
    for stream in (False, True):
        print(f"\n{'streaming (include_usage)' if stream else 'non-streaming'}:")
        for key, unit in (
            (("tok_s", "tok/s"), ("req_s", "req/s"), ("p50_s", "s p50 latency"))
            + ((("ttft_s", "s p50 first token"),) if stream else ())
            + (("cpu_ms", "ms CPU per request (the server's processes)"),)
        ):
            meds = {}
            for name in servers:
                meds[name], line = summarize(name, runs[(name, stream)], key, unit)
                print("  " + line)
            for name in servers:
                if name != base:
                    per_round = [a[key] / b[key] for a, b in zip(runs[(name, stream)], runs[(base, stream)])]
                    print(
                        f"    {name} / {base}: {meds[name] / meds[base]:.2f}x "
                        f"(per round {min(per_round):.2f} - {max(per_round):.2f})"
                        + _target(key, meds[name] / meds[base])
                    )


def _target(key: str, ratio: float) -> str:
    if key == "tok_s":
        return f"  target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}"
    if key == "ttft_s":
        return f"  target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}"
    return ""


if __name__ == "__main__":
    main()
