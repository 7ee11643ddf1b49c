"""The judge on any OpenAI-compatible endpoint (GPT-4o, a vLLM server, this project's Serve app).

Calls ask for JSON matching a schema: `response_format` json_schema, or on vLLM's
server its `structured_outputs` with a whitespace-free pattern of the answer (its
JSON-schema grammar lets a weak model run on in whitespace to the token cap). The
answer is validated here too: servers that ignore the request's format still cannot
pass a malformed answer downstream. Each call goes through, in order: the on-disk
cache (a re-run pays for no call twice), the concurrency limit, the token bucket,
and retries with exponential backoff and jitter on 429 / 5xx / timeouts /
connection errors. An unusable answer is retried only with a new seed at a
sampling temperature (never unchanged); an answer cut at `judge.max_tokens` is
rejected at once. The API key comes from the environment variable named in the
config and is never logged or cached, and error text from the server is scrubbed
of key fragments before it becomes a rejected row's reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import threading
import time

from r1v_ray.config import JudgeConfig
from r1v_ray.data.images import api_image
from r1v_ray.data.io import exists, read_text, write_text
from r1v_ray.engines.judge.base import Assessment, Judge, JudgeError, Regenerate, Usage, split_think
from r1v_ray.prompts import question_text

SCHEMAS = {
    "assessment": {
        "image_necessity": "0-10: how much answering depends on the image (context ablation: is the text alone enough?)",
        "question_quality": "0-10: grammatical, unambiguous, semantically coherent question",
        "difficulty": "0-10: domain knowledge and conceptual complexity required",
        "reasoning_demand": "0-10: number and complexity of inference steps (multi-hop)",
        "integration": "0-10: depth of vision-text integration: causal why/how with presuppositions, several objects "
        "and their spatial relations, co-occurring domain terms (high); plain what/where about one "
        "object (low)",
    },
    "verdict": {
        "correct": "true iff the response's final answer equals the reference answer",
        "final_answer": "the final answer the response gives",
    },
    "revision": {
        "think": "corrected step-by-step reasoning that leads to the reference answer",
        "answer": "the final answer (the reference answer)",
    },
    "rm": {
        "score": "integer 0-5: quality of this sample as training data (rubric in the instructions)",
        "reason": "one sentence",
    },
}
INSTRUCTIONS = {
    "assessment": "You rate an image-text query for a multimodal reasoning dataset. Score each criterion from 0 to 10.",
    "verdict": "You check whether a model's response reaches the reference answer. Judge only the final answer.",
    "revision": "The model's reasoning below reaches a wrong answer. Rewrite the reasoning so that it is correct and "
    "ends at the reference answer; keep the useful steps.",
    "rm": "Score this sample from 0 to 5: 5 = correct answer, sound and concise reasoning grounded in the image; "
    "3 = correct but with weak or verbose reasoning; 1 = mostly wrong reasoning; 0 = unusable.",
}
NUMBER_FIELDS = {"image_necessity", "question_quality", "difficulty", "reasoning_demand", "integration"}


def json_schema(kind: str) -> dict:
    props = {}
    for name, desc in SCHEMAS[kind].items():
        kind_of = (
            "boolean"
            if name == "correct"
            else "integer"
            if name == "score"
            else "number"
            if name in NUMBER_FIELDS
            else "string"
        )
        props[name] = {"type": kind_of, "description": desc}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": kind,
            "strict": True,
            "schema": {"type": "object", "properties": props, "required": list(props), "additionalProperties": False},
        },
    }


_CHAR = r'([^"\\\x00-\x1f]|\\[nt"\\/])'  # a JSON string's character: plain or a simple escape
_MAX_CHARS = {"think": None, "reason": 300}  # others (answers) 100; the reasoning as long as max_tokens allows
_PATTERNS = {"boolean": "(true|false)", "integer": "[0-5]", "number": r"(10|[0-9](\.[0-9]{1,2})?)"}


def answer_pattern(kind: str) -> str:
    """The answer of `kind` as a regular expression for vLLM's structured outputs: the schema's fields in
    order, no whitespace, numbers in range, strings of bounded length but the revision's reasoning."""
    props = json_schema(kind)["json_schema"]["schema"]["properties"]
    parts = []
    for name, prop in props.items():
        limit = _MAX_CHARS.get(name, 100)
        value = _PATTERNS.get(prop["type"]) or f'"{_CHAR}{"*" if limit is None else f"{{0,{limit}}}"}"'
        parts.append(f'"{name}":{value}')
    return r"\{" + ",".join(parts) + r"\}"


def scrub_secrets(text: str, key: str | None) -> str:
    """`text` without the key, key-like tokens (sk-...) and masked fragments (sk-ab***...wxyz) of it."""
    if key:
        text = text.replace(key, "[redacted]")
    text = re.sub(r"\bsk-[\w\-*.]+", "[redacted]", text)
    text = re.sub(r"\S*\*{3,}\S*", "[redacted]", text)
    if key and len(key) >= 8:  # a fragment the server echoed, e.g. the key's last characters
        text = re.sub(r"[\w\-]{4,}", lambda m: "[redacted]" if m.group(0) in key else m.group(0), text)
    return text


def parse_answer(kind: str, content: str | None) -> dict:
    """The judge's JSON answer, checked against the schema; ValueError (retried) when unusable."""
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError as exc:
        raise ValueError(f"judge answer is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(SCHEMAS[kind]) - set(data):
        raise ValueError(f"judge answer lacks fields {sorted(set(SCHEMAS[kind]) - set(data or {}))}")
    for name in NUMBER_FIELDS & set(data):
        if isinstance(data[name], bool) or not isinstance(data[name], (int, float)) or not 0 <= data[name] <= 10:
            raise ValueError(f"judge field {name}={data[name]!r} is not a number in [0, 10]")
    if kind == "rm" and (
        not isinstance(data["score"], int) or isinstance(data["score"], bool) or not 0 <= data["score"] <= 5
    ):
        raise ValueError(f"judge rm score {data['score']!r} is not an integer in 0..5")
    if kind == "verdict" and not isinstance(data["correct"], bool):
        raise ValueError(f"judge verdict 'correct'={data['correct']!r} is not a boolean")
    return data


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `capacity`; thread-safe."""

    def __init__(self, rate: float, capacity: float | None = None):
        if rate <= 0:
            raise ValueError(f"judge.requests_per_second={rate}: must be positive")
        self.rate, self.capacity = rate, capacity or max(1.0, rate)
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class JudgeCache:
    """One JSON file per request hash, on a local path or a pyarrow/fsspec URI shared by all workers."""

    def __init__(self, root: str | None):
        self.root = root

    @staticmethod
    def key(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict | None:
        if self.root is None or not exists(self._path(key)):
            return None
        try:
            return json.loads(read_text(self._path(key)))
        except (OSError, json.JSONDecodeError):
            return None  # a torn entry is a miss, never a crash

    def put(self, key: str, value: dict) -> None:
        if self.root is None:
            return
        if "://" in self.root:
            write_text(self._path(key), json.dumps(value))
            return
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)  # readers see a whole entry or none


def api_key_from_env(cfg: JudgeConfig) -> str:
    """The key, read where the job starts; Ray workers get it as an argument, never through logs or runtime_env."""
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise JudgeError(
            f"judge.kind=openai needs an API key in the environment variable {cfg.api_key_env} "
            "(judge.api_key_env); any non-empty value for servers without authentication"
        )
    return key


def _image_url(image: bytes) -> str:
    mime, data = api_image(bytes(image))  # the real type (or a PNG re-encoding), not always "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def judge_query(row: dict, extra: str = "") -> list[dict]:
    """The user content of every judge request for a row: its image, then the paper's question text and `extra`."""
    text = question_text(row)
    return [
        {"type": "image_url", "image_url": {"url": _image_url(row["image"])}},
        {"type": "text", "text": f"Query:\n{text}{extra}"},
    ]


class UnusableAnswer(ValueError):
    """An answer that arrived but cannot be used (not JSON, fields missing or out of range)."""


def detect_server(client, base_url: str | None) -> str:
    """'vllm' when the endpoint is vLLM's OpenAI server (its models are owned_by 'vllm'), else 'openai'."""
    if base_url is None:
        return "openai"
    try:
        return "vllm" if any(getattr(m, "owned_by", None) == "vllm" for m in client.models.list()) else "openai"
    except Exception:  # no /v1/models (or it refused): the portable response_format it is
        return "openai"


class OpenAIJudge(Judge):
    name = "openai"

    def __init__(
        self, cfg: JudgeConfig, cache_dir: str | None, concurrency_share: float = 1.0, api_key: str | None = None
    ):
        import openai

        self.key = api_key or api_key_from_env(cfg)
        self.cfg = cfg
        # Retries are ours (counted, with jitter), so the client's are off.
        self.client = openai.OpenAI(api_key=self.key, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0)
        self.transient = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        self.cache = JudgeCache(cache_dir)
        self.slots = threading.BoundedSemaphore(max(1, int(cfg.max_concurrency * concurrency_share)))
        self.bucket = TokenBucket(cfg.requests_per_second * concurrency_share)
        self._server = None if cfg.server == "auto" else cfg.server
        self._server_lock = threading.Lock()

    @property
    def server(self) -> str:
        with self._server_lock:
            if self._server is None:
                self._server = detect_server(self.client, self.cfg.base_url)
        return self._server

    def request(self, kind: str, content: list[dict]) -> dict:
        """The request body (also the cache key): capped, seeded, with the answer's format for this server."""
        request = {
            "model": self.cfg.model,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "seed": self.cfg.seed,
            "messages": [{"role": "system", "content": INSTRUCTIONS[kind]}, {"role": "user", "content": content}],
        }
        if self.server == "vllm":
            request["extra_body"] = {"structured_outputs": {"regex": answer_pattern(kind)}}
        else:
            request["response_format"] = json_schema(kind)
        return request

    def _answer(self, kind: str, reply, usage: Usage) -> dict:
        if reply.usage is not None:
            usage.input_tokens += reply.usage.prompt_tokens or 0
            usage.output_tokens += reply.usage.completion_tokens or 0
        choice = reply.choices[0] if reply.choices else None
        finish = getattr(choice, "finish_reason", None)
        if finish == "length":
            raise JudgeError(
                f"judge {kind} answer was cut at judge.max_tokens={self.cfg.max_tokens} (finish_reason length); "
                "raise judge.max_tokens",
                usage,
            )
        if finish == "content_filter":
            raise JudgeError(f"judge {kind} answer was withheld by the server's content filter", usage)
        try:
            return parse_answer(kind, choice.message.content if choice is not None else None)
        except ValueError as exc:
            raise UnusableAnswer(str(exc)) from None

    def _call(self, kind: str, content: list[dict]) -> tuple[dict, Usage]:
        request = self.request(kind, content)
        key = JudgeCache.key(request)
        cached = self.cache.get(key)
        if cached is not None:
            return cached["answer"], Usage(cache_hits=1)
        usage, last_error, attempt_request, resamples = Usage(), None, request, 0
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                usage.retries += 1
                if not isinstance(last_error, UnusableAnswer):  # a resample has nothing to wait for
                    time.sleep(self._backoff(attempt, last_error))
            self.bucket.acquire()
            with self.slots:
                usage.calls += 1
                try:
                    answer = self._answer(kind, self.client.chat.completions.create(**attempt_request), usage)
                except UnusableAnswer as exc:
                    last_error = exc
                    if resamples >= self.cfg.answer_retries:
                        break
                    resamples += 1  # never the same request again: a new seed, and room to sample
                    attempt_request = {
                        **request,
                        "seed": self.cfg.seed + resamples,
                        "temperature": max(self.cfg.temperature, self.cfg.retry_temperature),
                    }
                    continue
                except self.transient as exc:
                    last_error = exc
                    continue
                except JudgeError:
                    raise
                except Exception as exc:  # 4xx other than 429, or anything else: the request itself is wrong
                    raise JudgeError(self._refusal(kind, exc), usage) from None
            self.cache.put(key, {"answer": answer, "kind": kind})
            return answer, usage
        raise JudgeError(
            f"judge {kind} call failed after {usage.calls} attempts: {type(last_error).__name__}: "
            f"{scrub_secrets(str(last_error), self.key)[:200]}",
            usage,
        )

    def _refusal(self, kind: str, exc: Exception) -> str:
        import openai

        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            # The server's text can echo a masked part of the key: none of it goes into a reason.
            return (
                f"judge refused the {kind} request: HTTP {exc.status_code} ({type(exc).__name__}): check the key "
                f"in the environment variable {self.cfg.api_key_env} (judge.api_key_env)"
            )
        status = f"HTTP {exc.status_code}: " if isinstance(exc, openai.APIStatusError) else f"{type(exc).__name__}: "
        text = exc.message if isinstance(exc, openai.APIStatusError) else str(exc)
        return f"judge refused the {kind} request: {status}{scrub_secrets(text, self.key)[:300]}"

    def _backoff(self, attempt: int, error: Exception | None) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after") if error else None
        if retry_after:
            try:
                return min(60.0, float(retry_after))
            except ValueError:
                pass
        return min(30.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)  # exponential, jittered

    def assess(self, row: dict) -> tuple[Assessment, Usage]:
        answer, usage = self._call("assessment", judge_query(row))
        return Assessment(**{k: float(answer[k]) / 10.0 for k in SCHEMAS["assessment"]}), usage

    def verify(self, row: dict, completion: str) -> tuple[bool, Usage]:
        _, response = split_think(completion)
        answer, usage = self._call(
            "verdict", judge_query(row, f"\n\nReference answer: {row['answer']}\n\nResponse:\n{response}")
        )
        return bool(answer["correct"]), usage

    def revise(self, row: dict, completion: str, regenerate: Regenerate | None) -> tuple[str, Usage]:
        think, response = split_think(completion)
        extra = f"\n\nReference answer: {row['answer']}\n\nModel reasoning:\n{think}\n\nModel answer:\n{response}"
        answer, usage = self._call("revision", judge_query(row, extra))
        return f"<think>\n{answer['think'].strip()}\n</think>\n\nAnswer: \\boxed{{{row['answer']}}}", usage

    def rm_score(self, row: dict) -> tuple[int, str, Usage]:
        think = row.get("think") or row.get("rationale") or ""
        response = row.get("response") or f"Answer: \\boxed{{{row['answer']}}}"
        extra = f"\n\nReference answer: {row['answer']}\n\nReasoning:\n{think}\n\nResponse:\n{response}"
        answer, usage = self._call("rm", judge_query(row, extra))
        return int(answer["score"]), str(answer["reason"])[:300], usage
