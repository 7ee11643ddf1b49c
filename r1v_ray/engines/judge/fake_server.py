"""A local OpenAI-compatible judge server for fault tests, benchmarks and dry runs without an API key.

It answers `/v1/chat/completions` requests that ask for one of the judge's JSON
schemas with a deterministic, schema-valid answer, after `latency_s`, and
injects faults: the first attempts of a request (identified by a hash of its
body) get 429, 500, a response slower than the client's timeout, or malformed
JSON, by a fixed schedule; a later attempt always succeeds. Counters say what
was served. `answers` other than "valid" make every answer fail one way ("junk":
not JSON, "length": cut at the token cap, "unauthorized": HTTP 401 echoing a
masked key, as OpenAI's does), and `owned_by` is what `/v1/models` reports
("vllm" to pass for vLLM's server). Every request body is kept in `requests`.

    python -m r1v_ray.engines.judge.fake_server --port 8011 [--latency 0.2] [--faults]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from r1v_ray.engines.judge.openai_judge import SCHEMAS
from r1v_ray.rewards import extract_answer

FAULT_SCHEDULE = ["429", "ok", "500", "timeout", "badjson", "ok", "429", "500"]


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops bursts of concurrent connections
    daemon_threads = True


def _answer(kind: str, text: str, digest: int) -> dict:
    reference = re.search(r"Reference answer: (.*)", text)
    reference = reference.group(1).strip() if reference else ""
    if kind == "assessment":
        keys = ["image_necessity", "question_quality", "difficulty", "reasoning_demand", "integration"]
        return {k: (digest >> (4 * i)) % 11 for i, k in enumerate(keys)}
    if kind == "verdict":
        response = text.split("Response:\n", 1)[-1]
        return {"correct": extract_answer(response) == reference, "final_answer": extract_answer(response) or ""}
    if kind == "revision":
        return {"think": f"Looking at the image again, the answer is {reference}.", "answer": reference}
    return {"score": digest % 6, "reason": "deterministic test score"}


def _kind(request: dict) -> str:
    """Which judge call this is: the response_format's name, else the fields of the structured-output pattern."""
    name = request.get("response_format", {}).get("json_schema", {}).get("name")
    if name:
        return name
    pattern = request.get("structured_outputs", {}).get("regex", "")
    return next((k for k, fields in SCHEMAS.items() if all(f'"{f}"' in pattern for f in fields)), "rm")


class FakeJudgeServer:
    def __init__(
        self,
        port: int = 0,
        latency_s: float = 0.0,
        faults: bool = False,
        timeout_sleep_s: float = 3.0,
        answers: str = "valid",
        owned_by: str = "fake",
    ):
        self.latency_s, self.faults, self.timeout_sleep_s = latency_s, faults, timeout_sleep_s
        self.answers, self.owned_by = answers, owned_by
        self.requests: list[dict] = []
        self.served: Counter = Counter()  # outcome -> count ("ok", "429", "500", "timeout", "badjson")
        self.attempts: Counter = Counter()  # request hash -> attempts seen
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), self._handler())
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if not self.path.rstrip("/").endswith("/models"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                body = {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": server.owned_by}]}
                self._send(200, json.dumps(body).encode())

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(raw)
                with server.lock:
                    server.requests.append(request)
                if server.answers == "unauthorized":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    message = f"Incorrect API key provided: {key[:3]}{'*' * 20}{key[-4:]}. You can find your API key."
                    return self._send(
                        401, json.dumps({"error": {"message": message, "code": "invalid_api_key"}}).encode()
                    )
                # One request across its resamples (the judge changes seed and temperature after a bad
                # answer): its later attempts still succeed.
                same = {k: v for k, v in request.items() if k not in ("seed", "temperature")}
                digest = int(hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:12], 16)
                with server.lock:
                    attempt = server.attempts[digest]
                    server.attempts[digest] += 1
                outcome = (
                    FAULT_SCHEDULE[(digest + attempt) % len(FAULT_SCHEDULE)] if server.faults and attempt < 2 else "ok"
                )
                with server.lock:
                    server.served[outcome] += 1
                time.sleep(server.latency_s)
                if outcome == "429":
                    return self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}')
                if outcome == "500":
                    return self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
                if outcome == "timeout":
                    time.sleep(server.timeout_sleep_s)
                kind = _kind(request)
                text = "\n".join(
                    p.get("text", "")
                    for m in request["messages"]
                    if isinstance(m["content"], list)
                    for p in m["content"]
                    if p.get("type") == "text"
                )
                content = json.dumps(_answer(kind, text, digest))
                finish = "stop"
                if outcome == "badjson" or server.answers == "junk":
                    content = "{not json"
                elif server.answers == "length":
                    content, finish = content[: len(content) // 2], "length"
                body = {
                    "id": f"fake-{digest:x}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "fake"),
                    "choices": [
                        {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}
                    ],
                    "usage": {
                        "prompt_tokens": len(raw) // 4,
                        "completion_tokens": len(content) // 4,
                        "total_tokens": len(raw) // 4 + len(content) // 4,
                    },
                }
                try:
                    self._send(200, json.dumps(body).encode())
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        return Handler

    def start(self) -> FakeJudgeServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeJudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--faults", action="store_true")
    args = ap.parse_args()
    srv = FakeJudgeServer(args.port, args.latency, args.faults)
    print(f"fake judge on {srv.base_url}")
    srv.httpd.serve_forever()
