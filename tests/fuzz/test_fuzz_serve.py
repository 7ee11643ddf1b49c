"""Fuzz: any request body the Serve endpoint can receive becomes an engine request or a 4xx error, never a crash."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fuzz_settings import examples
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from r1v_ray.serve.openai_api import APIError, Limits, parse_chat_request, parse_json

LIMITS = Limits(max_image_bytes=4_000, allow_remote_images=False, max_n=4, max_tokens=512)


def _png_url() -> str:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (1, 2, 3, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
urls = st.one_of(
    st.just(_png_url()),
    st.binary(max_size=64).map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()),
    st.sampled_from(["data:image/png;base64,!!!", "data:,x", "data:image/png,abc", "https://x.invalid/a.png"]),
    st.sampled_from(["file:///etc/passwd", "data:image/png;base64," + "A" * 8_000]),
    st.text(max_size=16),
    json_values,
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20) | json_values}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": urls}) | urls | json_values}
    ),
    json_values,
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "robot", ""]) | json_values,
                "content": st.text(max_size=20) | st.lists(parts, max_size=3) | json_values,
            }
        )
        | json_values,
        min_size=1,
        max_size=3,
    )
    | json_values
)
SAMPLING = ("n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "repetition_penalty")
numbers = st.integers(-3, 2000) | st.floats() | json_values
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "x", ""]) | json_values, "messages": messages},
    optional={key: numbers for key in SAMPLING}
    | {"stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3) | json_values}
    | {"stream": st.booleans() | json_values},
)


valid_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}) | st.just(
    {"type": "image_url", "image_url": {"url": _png_url()}}
)
valid_bodies = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]),
                    "content": st.text(max_size=20) | st.lists(valid_part, min_size=1, max_size=3),
                }
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "n": st.integers(1, 4),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 512),
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3),
        "seed": st.integers(0, 2**63 - 1),
        "stream": st.booleans(),
        "repetition_penalty": st.floats(0.01, 10),
    },
)


@st.composite
def mutated_bodies(draw):
    """A valid body with one field (top level, a message, or a content part) replaced by anything."""
    body = draw(valid_bodies)
    value = draw(numbers | urls | parts | json_values)
    where = draw(st.sampled_from(["model", "messages", "stop", "stream", *SAMPLING, "role", "content", "part"]))
    msg = body["messages"][0]
    if where in ("role", "content"):
        msg[where] = value
    elif where == "part":
        part = draw(st.just(value) | urls.map(lambda u: {"type": "image_url", "image_url": {"url": u}}))
        msg["content"] = [part] + (msg["content"] if isinstance(msg["content"], list) else [])
    else:
        body[where] = value
    return body


def _request_or_4xx(raw: bytes):
    try:
        out = parse_chat_request(parse_json(raw), ["m"], LIMITS)
    except APIError as err:
        assert 400 <= err.status < 500 and err.body()["error"]["code"], err.body()
        event(f"rejected: {err.code}")  # --hypothesis-show-statistics shows how the examples spread
        return None
    event("accepted")
    return out


@examples(600)
@given(valid_bodies | mutated_bodies() | mutated_bodies() | bodies | json_values)
def test_any_json_body_is_a_request_or_a_4xx(body):
    out = _request_or_4xx(json.dumps(body).encode())
    if out is not None:
        model, request, stream = out.model, out.request, out.stream
        s = request.sampling
        assert model == "m" and isinstance(stream, bool) and request.messages
        assert 1 <= s.n <= LIMITS.max_n and 1 <= s.max_tokens <= LIMITS.max_tokens and 0 <= s.temperature <= 2
        assert len(request.images) == sum(
            1 for m in request.messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"
        )


@examples(200)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_4xx(raw):
    _request_or_4xx(raw)


def test_a_deeply_nested_body_is_a_400():
    """Found by fuzzing: json.loads' RecursionError on a deeply nested body escaped as a 500."""
    with pytest.raises(APIError) as err:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    assert err.value.status == 400
