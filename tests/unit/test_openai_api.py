"""OpenAI request validation and response bodies, without a server."""

import base64
import io
import json

import pytest
from PIL import Image

from r1v_ray.engines.rollout.types import Completion, GenerationResult
from r1v_ray.serve.openai_api import (
    APIError,
    Limits,
    chat_response,
    check_result,
    parse_chat_request,
    parse_json,
    split_reasoning,
    stream_events,
)

LIMITS = Limits(max_image_bytes=10_000, allow_remote_images=False, max_n=4, max_tokens=512)


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(**kw):
    msg = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": _png()}}, {"type": "text", "text": "How many?"}],
    }
    return {"model": "m", "messages": [msg], **kw}


def test_valid_request_becomes_an_engine_request():
    model, req, stream = parse_chat_request(
        _body(n=2, temperature=0.5, max_tokens=32, stop="\n", seed=3, stream=True), ["m"], LIMITS
    )
    assert model == "m" and stream is True
    assert req.messages[0]["content"][0] == {"type": "image"} and len(req.images) == 1
    s = req.sampling
    assert (s.n, s.temperature, s.max_tokens, s.stop, s.seed) == (2, 0.5, 32, ["\n"], 3)
    assert parse_chat_request(_body(max_completion_tokens=7), ["m"], LIMITS)[1].sampling.max_tokens == 7


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"messages": []}, 400, "missing_model"),
        (_body(model="x"), 404, "model_not_found"),
        ({"model": "m", "messages": "hi"}, 400, "invalid_messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_messages"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "invalid_messages"),
        (_body(n=5), 400, "invalid_value"),
        (_body(n=1.5), 400, "invalid_value"),
        (_body(temperature="hot"), 400, "invalid_value"),
        (_body(max_tokens=513), 400, "invalid_value"),
        (_body(stop=[1]), 400, "invalid_value"),
        (_body(stream="yes"), 400, "invalid_value"),
    ],
)
def test_bad_requests(body, status, code):
    with pytest.raises(APIError) as err:
        parse_chat_request(body, ["m"], LIMITS)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.body()["error"]["code"] == code


@pytest.mark.parametrize(
    "url, status, code",
    [
        ("data:image/png;base64,!!!", 400, "invalid_image"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), 400, "invalid_image"),
        ("data:image/png;base64," + "A" * 20_000, 413, "image_too_large"),
        ("https://example.invalid/a.png", 400, "remote_images_disabled"),
        ("file:///etc/passwd", 400, "invalid_image"),
    ],
)
def test_bad_images(url, status, code):
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    with pytest.raises(APIError) as err:
        parse_chat_request(body, ["m"], LIMITS)
    assert (err.value.status, err.value.code) == (status, code)


def test_malformed_json():
    with pytest.raises(APIError, match="not valid JSON"):
        parse_json(b"{oops")
    with pytest.raises(APIError, match="JSON object"):
        parse_json(b"[1]")


def test_reasoning_is_split_and_streams_concatenate():
    text = "<think>\ncount: 2 red\n</think>\n\nAnswer: \\boxed{2}"
    assert split_reasoning(text) == ("count: 2 red", "Answer: \\boxed{2}")
    assert split_reasoning("plain") == (None, "plain")
    result = GenerationResult("id1", prompt_tokens=10, completions=[Completion(text, [1, 2, 3], None, "stop")])
    body = chat_response("m", result)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Answer: \\boxed{2}",
        "reasoning_content": "count: 2 red",
    }
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    events = stream_events("m", result)
    assert events[-1] == "data: [DONE]\n\n"
    deltas = [json.loads(e[6:])["choices"][0] for e in events[:-1]]
    assert "".join(d["delta"].get("content", "") for d in deltas) == body["choices"][0]["message"]["content"]
    assert "".join(d["delta"].get("reasoning_content", "") for d in deltas) == "count: 2 red"
    assert deltas[-1]["finish_reason"] == "stop"


def test_rejected_generation_is_a_400():
    with pytest.raises(APIError) as err:
        check_result(GenerationResult("x", error="prompt too long: 900 tokens"))
    assert err.value.code == "context_length_exceeded"


def test_discover_checkpoints(tiny_checkpoint, tmp_path):
    import shutil

    from r1v_ray.serve.app import discover_checkpoints

    shutil.copytree(tiny_checkpoint, tmp_path / "mlp_init" / "model")
    shutil.copytree(tiny_checkpoint, tmp_path / "grpo" / "step-20")
    (tmp_path / "notes").mkdir()
    found = discover_checkpoints(str(tmp_path))
    assert list(found) == ["grpo/step-20", "mlp_init"]
