"""OpenAI chat-completions schema: request validation into GenerationRequest, response bodies, errors.

Pure functions (no Ray, no HTTP server), so every 4xx rule is unit-tested. The rules on sampling
values that vLLM itself enforces (n with greedy sampling, top_p > 0, no empty stop string) are
checked by vLLM's own `SamplingParams` in the engine replica, before the request reaches an engine
(`r1v_ray.engines.rollout.vllm_async.sampling_params`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
import uuid
from dataclasses import dataclass

from PIL import Image

from r1v_ray.engines.rollout.types import Completion, GenerationRequest, GenerationResult, Sampling
from r1v_ray.serve.remote_images import RemoteImageError, fetch_image
from r1v_ray.serve.streaming import split_reasoning


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
    max_images: int = 4  # per request (the engines' limit per prompt, or serve's cap when lower)
    max_image_pixels: int = 16_000_000  # decoded width x height, per image
    max_messages: int = 256
    max_stop: int = 4
    max_body_bytes: int = 32 * 1024 * 1024


@dataclass
class ChatRequest:
    model: str
    request: GenerationRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def cap_decoded_pixels(max_pixels: int) -> None:
    """PIL's own decompression-bomb guard lowered to serve's cap (PIL warns above it and refuses twice
    it), for every decode in this process; requests above the cap are refused before decoding."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise APIError(400, "request body is nested too deeply", "invalid_json") from None
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
        try:
            data = fetch_image(url, limits.max_image_bytes)
        except RemoteImageError as exc:
            status, code = (413, "image_too_large") if exc.too_large else (400, "invalid_image")
            raise APIError(status, str(exc), code, param) from None
    else:
        raise APIError(400, "image_url.url must be a data URL (or http(s) when enabled)", "invalid_image", param)
    if len(data) > limits.max_image_bytes:
        raise APIError(413, f"image larger than {limits.max_image_bytes} bytes", "image_too_large", param)
    _check_decodes(data, limits.max_image_pixels, param)
    return data


def _check_decodes(data: bytes, max_pixels: int, param: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise APIError(
                    413,
                    f"image decodes to {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(serve.max_image_pixels): send it downscaled",
                    "image_too_large",
                    param,
                )
            img.load()
    except APIError:
        raise
    except Image.DecompressionBombError:  # PIL's own guard (twice the cap) fired while reading the header
        raise APIError(
            413, f"image decodes to more than {max_pixels} pixels (serve.max_image_pixels)", "image_too_large", param
        ) from None
    except Exception:
        raise APIError(400, "image could not be decoded", "invalid_image", param) from None


def _number(body: dict, key: str, default, lo, hi, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise APIError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}", "invalid_value", key)
    if not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {value}", "invalid_value", key)
    return kind(value)


def _content(i: int, content, limits: Limits, images: list) -> list[dict]:
    parts = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            if len(images) >= limits.max_images:
                raise APIError(400, f"more than {limits.max_images} images in one request", "too_many_images", param)
            url = part.get("image_url")
            images.append(_image_from_url(url.get("url") if isinstance(url, dict) else url, limits, param))
            parts.append({"type": "image"})
        else:
            raise APIError(400, f"{param}: unsupported content part (use text or image_url)", "invalid_messages", param)
    return parts


def _messages(body: dict, limits: Limits) -> tuple[list[dict], list[bytes]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "invalid_messages", "messages")
    if len(messages) > limits.max_messages:
        raise APIError(
            400, f"{len(messages)} messages; the limit is {limits.max_messages}", "too_many_messages", "messages"
        )
    out_messages, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise APIError(
                400, f"messages[{i}] needs a role of system, user or assistant", "invalid_messages", f"messages[{i}]"
            )
        content = msg.get("content")
        if isinstance(content, str):
            out_messages.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            out_messages.append({"role": msg["role"], "content": _content(i, content, limits, images)})
        else:
            raise APIError(
                400, f"messages[{i}].content must be a string or a list of parts", "invalid_messages", f"messages[{i}]"
            )
    return out_messages, images


def _stop(body: dict, limits: Limits) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of strings", "invalid_value", "stop")
    if stop and len(stop) > limits.max_stop:
        raise APIError(400, f"{len(stop)} stop strings; the limit is {limits.max_stop}", "invalid_value", "stop")
    return stop or None


def _flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "invalid_value", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise APIError(
            400, "'stream_options' must be an object like {\"include_usage\": true}", "invalid_value", "stream_options"
        )
    if not stream:
        raise APIError(400, "'stream_options' is only allowed with stream: true", "invalid_value", "stream_options")
    return stream, options.get("include_usage", False)


def parse_chat_request(body: dict, known_models: list[str], limits: Limits) -> ChatRequest:
    """The engine request for an OpenAI chat-completions body, or APIError."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", "missing_model", "model")
    if model not in known_models:
        raise APIError(
            404, f"model '{model}' does not exist; available: {sorted(known_models)}", "model_not_found", "model"
        )
    messages, images = _messages(body, limits)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = Sampling(
        n=_number(body, "n", 1, 1, limits.max_n, int),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 512, 1, limits.max_tokens, int),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=_stop(body, limits),
        seed=_number(body, "seed", None, 0, 2**63 - 1, int),
    )
    stream, include_usage = _flags(body)
    request = GenerationRequest(messages, images, sampling, request_id=f"chatcmpl-{uuid.uuid4().hex}")
    return ChatRequest(model, request, stream, include_usage)


def parse_chat_body(raw: bytes, known_models: list[str], limits: Limits) -> ChatRequest:
    """Body bytes to an engine request (JSON parsing and image decoding: run it off the event loop)."""
    if len(raw) > limits.max_body_bytes:
        raise APIError(413, f"request body larger than {limits.max_body_bytes} bytes", "request_too_large")
    return parse_chat_request(parse_json(raw), known_models, limits)


def _message(c: Completion) -> dict:
    reasoning, content = split_reasoning(c.text)
    msg = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def check_result(result: GenerationResult) -> None:
    if result.error is not None:
        code = "context_length_exceeded" if "too long" in result.error else "invalid_request"
        raise APIError(400, result.error, code, "messages" if code == "context_length_exceeded" else None)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(model: str, result: GenerationResult) -> dict:
    return {
        "id": result.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": _message(c), "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(result.completions)
        ],
        "usage": usage(result.prompt_tokens, sum(len(c.token_ids) for c in result.completions)),
    }


def models_response(model_ids: list[str]) -> dict:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "r1v_ray"} for m in model_ids],
    }
