"""The Serve app answers the stock `openai` client, routes by model id, and turns bad input into 4xx."""

import base64
import io
import random
import socket

import pytest
import ray
import requests
import torch
from PIL import Image

from r1v_ray.config import R1VConfig, RolloutConfig
from r1v_ray.data.synthetic import make_row
from r1v_ray.engines.rollout import GenerationRequest, HFEngine, Sampling
from r1v_ray.model import load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TOKEN = "test-token-not-a-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _messages(i: int) -> list[dict]:
    row = make_row(0, "test", i)
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _data_url(row["image"])}},
                {"type": "text", "text": row["question"]},
            ],
        }
    ]


@pytest.fixture(scope="module")
def two_checkpoints(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint and a copy with another projector: the two must answer differently."""
    model, processor = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.add_(0.5 * torch.randn_like(p))
    other = save_checkpoint(model, processor, str(tmp_path_factory.mktemp("other") / "model"))
    return {"mlp_init": tiny_checkpoint, "sft/t1": other}


@pytest.fixture(scope="module")
def base_url(two_checkpoints):
    from ray import serve

    from r1v_ray.serve.app import build_app, token_digest

    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    cfg = R1VConfig()
    cfg.model.dtype = "float32"
    cfg.rollout = RolloutConfig(backend="vllm", device="cpu", num_workers=1, max_model_len=512, cpu_kvcache_gib=1)
    cfg.serve.max_image_bytes = 50_000
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(two_checkpoints, cfg, token_digest(TOKEN)), name="r1v", route_prefix="/")
    yield f"http://127.0.0.1:{port}/v1"
    serve.shutdown()
    ray.shutdown()


def _hf_greedy(path: str, i: int, max_tokens: int) -> str:
    row = make_row(0, "test", i)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
    engine = HFEngine(path, RolloutConfig(backend="hf", device="cpu", max_model_len=512), "float32")
    req = GenerationRequest(msgs, [row["image"]], Sampling(temperature=0.0, max_tokens=max_tokens))
    return engine.generate([req])[0].completions[0].text


def test_openai_client_models_chat_and_routing(base_url, two_checkpoints):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    assert sorted(m.id for m in client.models.list()) == ["mlp_init", "sft/t1"]
    answers = {}
    for model_id, path in two_checkpoints.items():
        resp = client.chat.completions.create(model=model_id, messages=_messages(0), temperature=0.0, max_tokens=12)
        assert resp.model == model_id and resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 4
        text = resp.choices[0].message.content
        assert text == _hf_greedy(path, 0, 12)  # the request reached this model id's checkpoint
        answers[model_id] = text
    assert answers["mlp_init"] != answers["sft/t1"]
    several = client.chat.completions.create(
        model="mlp_init", messages=_messages(1), n=3, temperature=1.0, max_tokens=8, seed=5
    )
    assert len(several.choices) == 3 and [c.index for c in several.choices] == [0, 1, 2]


def test_streaming_matches_non_streaming(base_url):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    full = client.chat.completions.create(model="mlp_init", messages=_messages(2), temperature=0.0, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="mlp_init", messages=_messages(2), temperature=0.0, max_tokens=16, stream=True
        )
    )
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == full.choices[0].message.content


def test_bad_requests_get_4xx_and_the_app_keeps_serving(base_url):
    url = f"{base_url}/chat/completions"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = {"model": "mlp_init", "messages": _messages(0), "max_tokens": 4}
    big = io.BytesIO()
    Image.frombytes("RGB", (300, 300), random.Random(0).randbytes(300 * 300 * 3)).save(
        big, format="PNG"
    )  # noise: ~270 kB
    cases = [
        ({}, good, 401, "invalid_api_key"),
        ({"Authorization": "Bearer wrong"}, good, 401, "invalid_api_key"),
        (auth, {**good, "model": "nope"}, 404, "model_not_found"),
        (auth, "{not json", 400, "invalid_json"),
        (
            auth,
            {
                **good,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"junk").decode()},
                            }
                        ],
                    }
                ],
            },
            400,
            "invalid_image",
        ),
        (
            auth,
            {
                **good,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": _data_url(big.getvalue())}}],
                    }
                ],
            },
            413,
            "image_too_large",
        ),
        (
            auth,
            {
                **good,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/cat.png"}}],
                    }
                ],
            },
            400,
            "remote_images_disabled",
        ),
        (auth, {**good, "messages": [{"role": "user", "content": "count " * 600}]}, 400, "context_length_exceeded"),
        (auth, {**good, "max_tokens": 100000}, 400, "invalid_value"),
        (auth, {**good, "n": 0}, 400, "invalid_value"),
    ]
    for headers, body, status, code in cases:
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        r = requests.post(url, headers={**headers, "Content-Type": "application/json"}, timeout=120, **kwargs)
        assert r.status_code == status, (code, r.text)
        assert r.json()["error"]["code"] == code
    r = requests.post(url, headers=auth, json=good, timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
