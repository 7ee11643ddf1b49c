"""OpenAI chat-completions schema: request validation into GenerationRequest, response bodies, errors.

Pure functions (no Ray, no HTTP server), so every 4xx rule is unit-tested.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
from dataclasses import dataclass

from PIL import Image

from r1v_ray.engines.rollout.types import Completion, GenerationRequest, GenerationResult, Sampling
from r1v_ray.model.tokenizer import THINK_CLOSE, THINK_OPEN


class APIError(Exception):
    """An error the client caused (or may retry), rendered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        kind = {401: "authentication_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_image_bytes: int
    allow_remote_images: bool
    max_n: int
    max_tokens: int  # the context: no request may ask for more


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    return body


def _image_from_url(url, limits: Limits, param: str) -> bytes:
    if not isinstance(url, str):
        raise APIError(400, "image_url.url must be a string", "invalid_image", param)
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise APIError(400, "image data URLs must be base64 encoded", "invalid_image", param)
        if len(payload) * 3 // 4 > limits.max_image_bytes:
            raise APIError(413, f"image larger than {limits.max_image_bytes} bytes", "image_too_large", param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "image data URL is not valid base64", "invalid_image", param) from None
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote_images:
            raise APIError(
                400,
                "remote image URLs are disabled on this server; send a base64 data URL",
                "remote_images_disabled",
                param,
            )
        data = _fetch(url, limits.max_image_bytes, param)
    else:
        raise APIError(400, "image_url.url must be a data URL (or http(s) when enabled)", "invalid_image", param)
    if len(data) > limits.max_image_bytes:
        raise APIError(413, f"image larger than {limits.max_image_bytes} bytes", "image_too_large", param)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception:
        raise APIError(400, "image could not be decoded", "invalid_image", param) from None
    return data


def _fetch(url: str, max_bytes: int, param: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (opt-in by config)
            data = resp.read(max_bytes + 1)
    except Exception as exc:
        raise APIError(400, f"could not fetch image: {exc}", "invalid_image", param) from None
    if len(data) > max_bytes:
        raise APIError(413, f"image larger than {max_bytes} bytes", "image_too_large", param)
    return data


def _number(body: dict, key: str, default, lo, hi, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise APIError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}", "invalid_value", key)
    if not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {value}", "invalid_value", key)
    return kind(value)


def parse_chat_request(body: dict, known_models: list[str], limits: Limits) -> tuple[str, GenerationRequest, bool]:
    """(model id, engine request, stream) from an OpenAI chat-completions body, or APIError."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", "missing_model", "model")
    if model not in known_models:
        raise APIError(
            404, f"model '{model}' does not exist; available: {sorted(known_models)}", "model_not_found", "model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "invalid_messages", "messages")
    out_messages, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise APIError(
                400, f"messages[{i}] needs a role of system, user or assistant", "invalid_messages", f"messages[{i}]"
            )
        content = msg.get("content")
        if isinstance(content, str):
            out_messages.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise APIError(
                400, f"messages[{i}].content must be a string or a list of parts", "invalid_messages", f"messages[{i}]"
            )
        parts = []
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                url = part.get("image_url")
                images.append(_image_from_url(url.get("url") if isinstance(url, dict) else url, limits, param))
                parts.append({"type": "image"})
            else:
                raise APIError(
                    400, f"{param}: unsupported content part (use text or image_url)", "invalid_messages", param
                )
        out_messages.append({"role": msg["role"], "content": parts})
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of strings", "invalid_value", "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = Sampling(
        n=_number(body, "n", 1, 1, limits.max_n, int),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 512, 1, limits.max_tokens, int),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=stop,
        seed=_number(body, "seed", None, 0, 2**63 - 1, int),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "invalid_value", "stream")
    request = GenerationRequest(out_messages, images, sampling, request_id=f"chatcmpl-{uuid.uuid4().hex}")
    return model, request, stream


def split_reasoning(text: str) -> tuple[str | None, str]:
    """R1-style output: (reasoning inside <think>...</think>, the answer after it)."""
    if THINK_CLOSE not in text:
        return None, text
    head, _, tail = text.partition(THINK_CLOSE)
    return head.replace(THINK_OPEN, "", 1).strip(), tail.lstrip()


def _message(c: Completion) -> dict:
    reasoning, content = split_reasoning(c.text)
    msg = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def check_result(result: GenerationResult) -> None:
    if result.error is not None:
        code = "context_length_exceeded" if "too long" in result.error else "invalid_request"
        raise APIError(400, result.error, code, "messages")


def chat_response(model: str, result: GenerationResult) -> dict:
    completion_tokens = sum(len(c.token_ids) for c in result.completions)
    return {
        "id": result.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": _message(c), "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(result.completions)
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": result.prompt_tokens + completion_tokens,
        },
    }


def stream_events(model: str, result: GenerationResult) -> list[str]:
    """Server-sent events of a finished result: a role chunk, content pieces, a finish chunk per choice."""
    created = int(time.time())

    def event(index: int, delta: dict, finish: str | None) -> str:
        chunk = {
            "id": result.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    events = []
    for i, c in enumerate(result.completions):
        events.append(event(i, {"role": "assistant", "content": ""}, None))
        reasoning, content = split_reasoning(c.text)
        for field, text in (("reasoning_content", reasoning or ""), ("content", content)):
            for piece in re.findall(r"\s*\S+|\s+$", text):  # word pieces; they concatenate to the text exactly
                events.append(event(i, {field: piece}, None))
        events.append(event(i, {}, c.finish_reason))
    events.append("data: [DONE]\n\n")
    return events


def models_response(model_ids: list[str]) -> dict:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "r1v_ray"} for m in model_ids],
    }
