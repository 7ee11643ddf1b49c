"""The judge on any OpenAI-compatible endpoint (GPT-4o, a vLLM server, this project's Serve app).

Calls ask for JSON matching a schema (`response_format` json_schema) and the
answer is validated here too: servers that ignore the schema still cannot pass
a malformed answer downstream. Each call goes through, in order: the on-disk
cache (a re-run pays for no call twice), the concurrency limit, the token
bucket, and retries with exponential backoff and jitter on 429 / 5xx /
timeouts / connection errors / invalid JSON. The API key comes from the
environment variable named in the config and is never logged or cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time

from r1v_ray.config import JudgeConfig
from r1v_ray.data.images import api_image
from r1v_ray.data.io import exists, read_text, write_text
from r1v_ray.engines.judge.base import Assessment, Judge, JudgeError, Regenerate, Usage, split_think
from r1v_ray.rewards import build_question_text

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


class OpenAIJudge(Judge):
    name = "openai"

    def __init__(
        self, cfg: JudgeConfig, cache_dir: str | None, concurrency_share: float = 1.0, api_key: str | None = None
    ):
        import openai

        key = api_key or api_key_from_env(cfg)
        self.cfg = cfg
        # Retries are ours (counted, with jitter, also on invalid JSON), so the client's are off.
        self.client = openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0)
        self.retryable = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, ValueError)
        self.cache = JudgeCache(cache_dir)
        self.slots = threading.BoundedSemaphore(max(1, int(cfg.max_concurrency * concurrency_share)))
        self.bucket = TokenBucket(cfg.requests_per_second * concurrency_share)

    def _call(self, kind: str, content: list[dict]) -> tuple[dict, Usage]:
        import openai

        request = {
            "model": self.cfg.model,
            "temperature": 0.0,
            "response_format": json_schema(kind),
            "messages": [{"role": "system", "content": INSTRUCTIONS[kind]}, {"role": "user", "content": content}],
        }
        key = JudgeCache.key(request)
        cached = self.cache.get(key)
        if cached is not None:
            return cached["answer"], Usage(cache_hits=1)
        usage, last_error = Usage(), None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                usage.retries += 1
                time.sleep(self._backoff(attempt, last_error))
            self.bucket.acquire()
            with self.slots:
                usage.calls += 1
                try:
                    reply = self.client.chat.completions.create(**request)
                    if reply.usage is not None:
                        usage.input_tokens += reply.usage.prompt_tokens or 0
                        usage.output_tokens += reply.usage.completion_tokens or 0
                    answer = parse_answer(kind, reply.choices[0].message.content if reply.choices else None)
                except self.retryable as exc:
                    last_error = exc
                    continue
                except openai.APIStatusError as exc:  # 4xx other than 429: the request itself is wrong
                    raise JudgeError(
                        f"judge refused the {kind} request: HTTP {exc.status_code}: {exc.message}"
                    ) from None
            self.cache.put(key, {"answer": answer, "kind": kind})
            return answer, usage
        raise JudgeError(
            f"judge {kind} call failed after {usage.calls} attempts: {type(last_error).__name__}: "
            f"{str(last_error)[:200]}"
        )

    def _backoff(self, attempt: int, error: Exception | None) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after") if error else None
        if retry_after:
            try:
                return min(60.0, float(retry_after))
            except ValueError:
                pass
        return min(30.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)  # exponential, jittered

    @staticmethod
    def _query(row: dict, extra: str = "") -> list[dict]:
        choices = row.get("choices")
        text = build_question_text(
            str(row["question"]), list(choices) if choices is not None and len(choices) else None
        )
        return [
            {"type": "image_url", "image_url": {"url": _image_url(row["image"])}},
            {"type": "text", "text": f"Query:\n{text}{extra}"},
        ]

    def assess(self, row: dict) -> tuple[Assessment, Usage]:
        answer, usage = self._call("assessment", self._query(row))
        return Assessment(**{k: float(answer[k]) / 10.0 for k in SCHEMAS["assessment"]}), usage

    def verify(self, row: dict, completion: str) -> tuple[bool, Usage]:
        _, response = split_think(completion)
        answer, usage = self._call(
            "verdict", self._query(row, f"\n\nReference answer: {row['answer']}\n\nResponse:\n{response}")
        )
        return bool(answer["correct"]), usage

    def revise(self, row: dict, completion: str, regenerate: Regenerate | None) -> tuple[str, Usage]:
        think, response = split_think(completion)
        extra = f"\n\nReference answer: {row['answer']}\n\nModel reasoning:\n{think}\n\nModel answer:\n{response}"
        answer, usage = self._call("revision", self._query(row, extra))
        return f"<think>\n{answer['think'].strip()}\n</think>\n\nAnswer: \\boxed{{{row['answer']}}}", usage

    def rm_score(self, row: dict) -> tuple[int, str, Usage]:
        think = row.get("think") or row.get("rationale") or ""
        response = row.get("response") or f"Answer: \\boxed{{{row['answer']}}}"
        extra = f"\n\nReference answer: {row['answer']}\n\nReasoning:\n{think}\n\nResponse:\n{response}"
        answer, usage = self._call("rm", self._query(row, extra))
        return int(answer["score"]), str(answer["reason"])[:300], usage
