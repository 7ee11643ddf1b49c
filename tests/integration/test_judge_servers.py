"""The OpenAI judge against real OpenAI-compatible servers: vLLM's own server, then this project's Serve app,
each serving a random tiny checkpoint as the judge. Its answers are junk; what must hold is that every row
ends in the output or in `rejected` with a reason, that each request carried the cap (and on vLLM its
structured outputs), and that no call is repeated past its retry budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
from _procs import stop_group

from r1v_ray.config import load_config
from r1v_ray.data.io import write_parquet
from r1v_ray.data.schema import canonical_table
from r1v_ray.data.synthetic import make_row

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo", "tiny.yaml")
TOKEN = "judge-test-token-not-a-secret"
ROWS, MAX_TOKENS, ANSWER_RETRIES = 4, 160, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingProxy:
    """Forwards to `upstream` and keeps every chat request body: what the judge really sent."""

    def __init__(self, upstream: str):
        self.upstream, self.bodies, self.lock = upstream.rstrip("/").removesuffix("/v1"), [], threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, body: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command)
                for name in ("Authorization", "Content-Type"):
                    if self.headers.get(name):
                        req.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        code, payload = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    code, payload = err.code, err.read()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.bodies.append(json.loads(body))
                self._forward(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _wait_healthy(url: str, proc: subprocess.Popen | None, log: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"vLLM's server exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} not healthy after {deadline_s} s:\n{open(log).read()[-3000:] if log else ''}")


@pytest.fixture(scope="module")
def vllm_server(tiny_checkpoint, tmp_path_factory):
    """vLLM's own OpenAI server on 127.0.0.1 with the tiny checkpoint, stopped at the end (its process group)."""
    port, tmp = _free_port(), tmp_path_factory.mktemp("vllm_server")
    log = str(tmp / "server.log")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_checkpoint]
    cmd += ["--served-model-name", "judge", "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--api-key", TOKEN]
    cmd += ["--limit-mm-per-prompt", '{"image":1,"video":0}']
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, 300)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc, 30)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def _cfg(tmp_path, base_url: str, monkeypatch):
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", TOKEN)
    return load_config(
        CONFIG,
        [
            f"run_dir={tmp_path / 'run'}",
            "judge.kind=openai",
            f"judge.base_url={base_url}",
            "judge.model=judge",
            "judge.api_key_env=R1V_TEST_JUDGE_KEY",
            f"judge.max_tokens={MAX_TOKENS}",
            f"judge.answer_retries={ANSWER_RETRIES}",
            "judge.timeout_s=120",
            "judge.num_workers=1",
            "rollout.backend=hf",
            "distill.max_tokens=16",
            # A random tiny model as the judge fails most rows: these tests check that each is accounted
            # for, not the failure-share gate (tests/unit/test_crash_points.py checks that).
            "judge.max_failure_share=1.0",
        ],
    )


def _score(cfg, ds, out: str) -> dict:
    """score's metrics. When a junk judge rejected every row the stage fails, saying so; the metrics then
    come from its metrics.jsonl."""
    from r1v_ray.distill.dataflow import score
    from r1v_ray.metrics import read_jsonl

    try:
        return score(cfg, ds, out)
    except ValueError as exc:
        assert "no rows were scored" in str(exc)
        last = read_jsonl(os.path.join(out, "metrics.jsonl"))[-1]
        return {**last, "rows_in": last["rows"], "rows_out": last["rows"] - last["rejected"]}


def _ids(uri: str) -> list[str]:
    table = pq.read_table(uri) if os.path.exists(uri) else None
    if table is None or "id" not in table.column_names:  # no rows were written there
        return []
    return [str(i) for i in table.column("id").to_pylist()]


def _accounted(inputs: list[str], out_uri: str, rejected_uri: str) -> list[str]:
    """Every input id once, in the output or in rejected; returns the rejected rows' reasons."""
    out, rejected = _ids(out_uri), _ids(rejected_uri)
    assert sorted(out + rejected) == sorted(inputs), (out, rejected)
    reasons = pq.read_table(rejected_uri).column("reason").to_pylist() if rejected else []
    assert all(isinstance(r, str) and r.startswith(("judge: ", "generation: ")) for r in reasons), reasons
    return reasons


def _check_requests(bodies: list[dict], vllm: bool, n_requests_max: int) -> None:
    assert bodies and len(bodies) <= n_requests_max
    assert all(b["max_tokens"] == MAX_TOKENS for b in bodies)
    if vllm:
        assert all("regex" in b["structured_outputs"] and "response_format" not in b for b in bodies)
    else:
        assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    # Nothing loops: a request is sent again only with another seed, and at most 1 + answer_retries times.
    same = Counter(json.dumps({k: v for k, v in b.items() if k not in ("seed", "temperature")}) for b in bodies)
    assert max(same.values()) <= 1 + ANSWER_RETRIES
    sampled = Counter(json.dumps(b, sort_keys=True) for b in bodies)
    assert max(sampled.values()) == 1, "a request was sent twice unchanged"


def test_distill_and_score_with_vllms_server_as_the_judge(
    vllm_server, ray_local, tiny_checkpoint, tmp_path, monkeypatch
):
    from r1v_ray.distill.dataflow import distill

    rows = [make_row(0, "train", i) for i in range(ROWS)]
    data = str(tmp_path / "train")
    write_parquet(canonical_table(rows), data)
    ids = [str(r["id"]) for r in rows]
    proxy = RecordingProxy(vllm_server)
    try:
        cfg = _cfg(tmp_path, proxy.base_url, monkeypatch)
        out = str(tmp_path / "distill")
        try:
            distill(cfg, ray_local.data.read_parquet(data), tiny_checkpoint, out)
        except ValueError as exc:  # a junk judge may reject every row: then the stage says so
            assert "every row was rejected" in str(exc)
        reasons = _accounted(ids, f"{out}/assessed", f"{out}/rejected_assess")
        reasons += _accounted(_ids(f"{out}/assessed"), f"{out}/data", f"{out}/rejected")
        scored = _score(cfg, ray_local.data.read_parquet(data), str(tmp_path / "score"))
        score_reasons = _accounted(ids, str(tmp_path / "score" / "data"), str(tmp_path / "score" / "rejected"))
    finally:
        proxy.close()
    assert scored["rows_in"] == ROWS and scored["rows_out"] + scored["rejected"] == ROWS
    # A row rejected for an answer cut at the cap still paid for max_tokens of output: it is counted.
    cut = sum("cut at judge.max_tokens" in r for r in score_reasons)
    assert scored["judge_output_tokens"] >= cut * MAX_TOKENS and scored["judge_calls"] >= ROWS
    reasons += score_reasons
    # Per row: assess, verify, revise, rm: 4 requests, each at most 1 + ANSWER_RETRIES times.
    _check_requests(proxy.bodies, vllm=True, n_requests_max=4 * ROWS * (1 + ANSWER_RETRIES))
    # Structured outputs make even a random model's numeric answers parse; its strings run to the cap,
    # and such an answer is rejected as cut, not retried.
    assert not any("not JSON" in r for r in reasons), reasons
    assert all("judge.max_tokens" in r for r in reasons if "cut" in r)


def test_score_with_this_projects_serve_app_as_the_judge(ray_local, tiny_checkpoint, tmp_path, monkeypatch):
    from ray import serve

    from r1v_ray.serve.app import build_app, token_digest

    serve_cfg = load_config(CONFIG, ["rollout.backend=hf", "rollout.max_model_len=1024"])
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"judge": tiny_checkpoint}, serve_cfg, token_digest(TOKEN)), name="judge", route_prefix="/")
    rows = [make_row(0, "train", i) for i in range(4)]
    data = str(tmp_path / "train")
    write_parquet(canonical_table(rows), data)
    proxy = RecordingProxy(f"http://127.0.0.1:{port}/v1")
    try:
        cfg = _cfg(tmp_path, proxy.base_url, monkeypatch)
        scored = _score(cfg, ray_local.data.read_parquet(data), str(tmp_path / "score"))
    finally:
        proxy.close()
        serve.shutdown()
    _accounted([str(r["id"]) for r in rows], str(tmp_path / "score" / "data"), str(tmp_path / "score" / "rejected"))
    assert scored["rows_out"] + scored["rejected"] == 4
    _check_requests(proxy.bodies, vllm=False, n_requests_max=4 * (1 + ANSWER_RETRIES))
