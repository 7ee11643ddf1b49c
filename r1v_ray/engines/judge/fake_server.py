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
    fake: FakeJudgeServer  # what answers (set by FakeJudgeServer)


class _Handler(BaseHTTPRequestHandler):
    """HTTP in and out; what to answer is the FakeJudgeServer's."""

    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(*self.server.fake.models(self.path))

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        reply = self.server.fake.chat(raw, self.headers.get("Authorization", ""))
        try:
            self._send(*reply)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


ERRORS = {
    "429": b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
    "500": b'{"error": {"message": "internal error", "type": "server_error"}}',
}


def _unauthorized(authorization: str) -> bytes:
    """OpenAI's 401 for a wrong key, echoing it masked."""
    key = authorization.removeprefix("Bearer ")
    message = f"Incorrect API key provided: {key[:3]}{'*' * 20}{key[-4:]}. You can find your API key."
    return json.dumps({"error": {"message": message, "code": "invalid_api_key"}}).encode()


def _digest(request: dict) -> int:
    """One request across its resamples (the judge changes seed and temperature after a bad answer), so that
    its later attempts still succeed."""
    same = {k: v for k, v in request.items() if k not in ("seed", "temperature")}
    return int(hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:12], 16)


def _request_text(request: dict) -> str:
    return "\n".join(
        p.get("text", "")
        for m in request["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p.get("type") == "text"
    )


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
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.fake = self
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def models(self, path: str) -> tuple[int, bytes]:
        """`GET /v1/models`: one model, owned by `owned_by`."""
        if not path.rstrip("/").endswith("/models"):
            return 404, b'{"error": {"message": "not found"}}'
        body = {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": self.owned_by}]}
        return 200, json.dumps(body).encode()

    def chat(self, raw: bytes, authorization: str) -> tuple[int, bytes]:
        """`POST /v1/chat/completions`: the status and body for this attempt of the request."""
        request = json.loads(raw)
        with self.lock:
            self.requests.append(request)
        if self.answers == "unauthorized":
            return 401, _unauthorized(authorization)
        digest = _digest(request)
        outcome = self._outcome(digest)
        time.sleep(self.latency_s)
        if outcome in ERRORS:
            return int(outcome), ERRORS[outcome]
        if outcome == "timeout":
            time.sleep(self.timeout_sleep_s)
        return 200, json.dumps(self._completion(request, len(raw), digest, outcome)).encode()

    def _outcome(self, digest: int) -> str:
        """With `faults`, the first two attempts of a request follow FAULT_SCHEDULE; every other one is "ok"."""
        with self.lock:
            attempt = self.attempts[digest]
            self.attempts[digest] += 1
            outcome = FAULT_SCHEDULE[(digest + attempt) % len(FAULT_SCHEDULE)] if self.faults and attempt < 2 else "ok"
            self.served[outcome] += 1
        return outcome

    def _completion(self, request: dict, raw_len: int, digest: int, outcome: str) -> dict:
        """The chat completion: the schema's deterministic answer, or the broken one `answers` asks for."""
        content = json.dumps(_answer(_kind(request), _request_text(request), digest))
        finish = "stop"
        if outcome == "badjson" or self.answers == "junk":
            content = "{not json"
        elif self.answers == "length":
            content, finish = content[: len(content) // 2], "length"
        return {
            "id": f"fake-{digest:x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
            "usage": {
                "prompt_tokens": raw_len // 4,
                "completion_tokens": len(content) // 4,
                "total_tokens": raw_len // 4 + len(content) // 4,
            },
        }

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
