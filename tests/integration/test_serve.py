"""The Serve app answers the stock `openai` client, routes by model id, streams as it generates, and
turns bad input into 4xx without touching other requests."""

import base64
import io
import random
import shutil
import threading
import time

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
    return {"mlp_init": tiny_checkpoint, "sft/M1": other}


@pytest.fixture(scope="module")
def served(two_checkpoints, tmp_path_factory):
    """Three ids; the replica holds two engines at most, so the third evicts one."""
    third = shutil.copytree(two_checkpoints["mlp_init"], tmp_path_factory.mktemp("third") / "model")
    return {**two_checkpoints, "grpo/checkpoints/step-20": str(third)}


@pytest.fixture(scope="module")
def base_url(served):
    from ray import serve

    from r1v_ray.serve.app import build_app, token_digest
    from r1v_ray.serve.endpoint import app_url, free_base_port, start_serve

    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    cfg = R1VConfig()
    cfg.model.dtype = "float32"
    cfg.rollout = RolloutConfig(backend="vllm", device="cpu", num_workers=1, max_model_len=512, cpu_kvcache_gib=1)
    cfg.serve.max_image_bytes = 50_000
    cfg.serve.max_body_bytes = 500_000
    cfg.serve.port = free_base_port()
    start_serve(cfg.serve)
    serve.run(build_app(served, cfg, token_digest(TOKEN)), name="r1v", route_prefix="/")
    url = app_url("r1v", "/", cfg.serve)
    assert url == f"http://127.0.0.1:{cfg.serve.port}"  # the ingress replica itself, not Serve's proxy
    yield url + "/v1"
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
    assert sorted(m.id for m in client.models.list()) == ["grpo/checkpoints/step-20", "mlp_init", "sft/M1"]
    answers = {}
    for model_id, path in two_checkpoints.items():
        resp = client.chat.completions.create(model=model_id, messages=_messages(0), temperature=0.0, max_tokens=12)
        assert resp.model == model_id and resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 4
        text = resp.choices[0].message.content
        assert text == _hf_greedy(path, 0, 12)  # the request reached this model id's checkpoint
        answers[model_id] = text
    assert answers["mlp_init"] != answers["sft/M1"]
    several = client.chat.completions.create(
        model="mlp_init", messages=_messages(1), n=3, temperature=1.0, max_tokens=8, seed=5
    )
    assert len(several.choices) == 3 and [c.index for c in several.choices] == [0, 1, 2]


def _stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("OpenAIIngress", app_name="r1v").stats.remote().result()


def test_streaming_as_generated_with_usage(base_url):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    kwargs = dict(model="mlp_init", messages=_messages(2), temperature=0.0, max_tokens=300)
    full = client.chat.completions.create(**kwargs)
    assert full.choices[0].finish_reason == "length"  # greedy runs to max_tokens: the stream below is long
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks, seen_running = [], None
    for chunk in stream:
        chunks.append(chunk)
        content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
        if len(content_chunks) == 2 and seen_running is None:
            seen_running = _stats()["engines"]["mlp_init"]["inflight"]  # two pieces arrived: still generating?
    assert seen_running == 1, (seen_running, len(chunks))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 300
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == full.choices[0].message.content
    several = list(
        client.chat.completions.create(
            model="mlp_init", messages=_messages(1), n=2, temperature=1.0, max_tokens=8, seed=3, stream=True
        )
    )
    assert {c.choices[0].index for c in several if c.choices} == {0, 1}


def test_client_disconnect_aborts_its_request(base_url):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    aborted = _stats()["engines"]["mlp_init"]["aborted"]
    stream = client.chat.completions.create(
        model="mlp_init", messages=_messages(2), temperature=0.0, max_tokens=400, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _stats()["engines"]["mlp_init"]["aborted"] == aborted:
        time.sleep(0.2)
    engine = _stats()["engines"]["mlp_init"]
    assert engine["aborted"] == aborted + 1 and engine["inflight"] == 0


def test_bad_requests_get_4xx_while_a_good_one_streams(base_url):
    import openai

    url = f"{base_url}/chat/completions"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = {"model": "mlp_init", "messages": _messages(0), "max_tokens": 4}
    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    kwargs = dict(model="mlp_init", messages=_messages(3), temperature=0.0, max_tokens=40)
    expected = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = []
    concurrent = threading.Thread(
        target=lambda: streamed.extend(client.chat.completions.create(**kwargs, stream=True)), daemon=True
    )
    concurrent.start()
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
        # vLLM's own rules, checked before the engine (the old app answered the first with 500)
        (auth, {**good, "n": 2, "temperature": 0}, 400, "invalid_request"),
        (auth, {**good, "top_p": 0}, 400, "invalid_request"),
        (auth, {**good, "stop": [""]}, 400, "invalid_request"),
        (
            auth,
            {**good, "messages": [{"role": "user", "content": _messages(0)[0]["content"][:1] * 5}]},
            400,
            "too_many_images",
        ),
        (auth, {**good, "messages": [{"role": "user", "content": "x" * 600_000}]}, 413, "request_too_large"),
    ]
    for headers, body, status, code in cases:
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        r = requests.post(url, headers={**headers, "Content-Type": "application/json"}, timeout=120, **kwargs)
        assert r.status_code == status, (code, r.text)
        assert r.json()["error"]["code"] == code
    r = requests.post(url, headers=auth, json=good, timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    concurrent.join(timeout=300)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert requests.get(base_url.removesuffix("/v1") + "/openapi.json", timeout=30).status_code == 404


def test_eviction_shuts_the_engine_down_and_frees_its_memory(base_url):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=300)
    for model in ("mlp_init", "sft/M1"):
        client.chat.completions.create(model=model, messages=_messages(0), max_tokens=2)
    before = _stats()
    assert sorted(before["engines"]) == ["mlp_init", "sft/M1"]
    client.chat.completions.create(
        model="grpo/checkpoints/step-20", messages=_messages(0), max_tokens=2
    )  # evicts mlp_init (LRU)
    after = _stats()
    load = after["loads"][-1]
    assert load["model"] == "grpo/checkpoints/step-20" and load["loaded"] == ["sft/M1"]
    # Measured when the new engine starts loading: the evicted one's memory is already given back.
    assert before["rss_mib"] - load["rss_mib"] > 400, (before["rss_mib"], load["rss_mib"])
    assert sorted(after["engines"]) == ["grpo/checkpoints/step-20", "sft/M1"]


def test_several_engine_replicas_route_through_the_model_server(base_url, two_checkpoints):
    """rollout.num_workers > 1: a separate ModelServer deployment behind the ingress (HF engines: cheap to load)."""
    import openai
    from ray import serve

    from r1v_ray.serve.app import build_app, token_digest
    from r1v_ray.serve.endpoint import app_url, proxy_port

    cfg = R1VConfig()
    cfg.model.dtype = "float32"
    cfg.rollout = RolloutConfig(backend="hf", device="cpu", num_workers=2, max_model_len=512)
    cfg.serve.port = int(base_url.rsplit(":", 1)[1].removesuffix("/v1"))  # the Serve instance the fixture started
    app = build_app({"mlp_init": two_checkpoints["mlp_init"]}, cfg, token_digest(TOKEN))
    serve.run(app, name="r1v-hf", route_prefix="/hf")
    try:
        url = app_url("r1v-hf", "/hf", cfg.serve)
        # This app's own ingress replica: a port of the direct-ingress range past the first app's, not the proxy's
        # (Serve takes the next free one, so another process holding port + 1 moves it up).
        port = int(url.rsplit(":", 1)[1].removesuffix("/hf"))
        assert url.startswith("http://127.0.0.1:") and cfg.serve.port < port < proxy_port(cfg.serve), url
        client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
        kwargs = dict(model="mlp_init", messages=_messages(0), temperature=0.0, max_tokens=12)
        full = client.chat.completions.create(**kwargs)
        assert full.choices[0].message.content == _hf_greedy(two_checkpoints["mlp_init"], 0, 12)
        chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
        deployments = serve.status().applications["r1v-hf"].deployments
        assert sorted(deployments) == ["ModelServer", "OpenAIIngress"]
        assert sum(deployments["ModelServer"].replica_states.values()) == 2
    finally:
        serve.delete("r1v-hf")
