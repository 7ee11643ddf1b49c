"""OpenAI request validation and response bodies, without a server."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from r1v_ray.engines.rollout.types import Completion, CompletionDelta, GenerationResult, Sampling
from r1v_ray.serve.openai_api import (
    APIError,
    Limits,
    chat_response,
    check_result,
    parse_chat_body,
    parse_chat_request,
    parse_json,
)
from r1v_ray.serve.streaming import ChatStream, split_reasoning

LIMITS = Limits(
    max_image_bytes=10_000,
    allow_remote_images=False,
    max_n=4,
    max_tokens=512,
    max_images=2,
    max_image_pixels=10_000,
    max_messages=3,
    max_stop=2,
    max_body_bytes=50_000,
)


def _png(size=(8, 8)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(**kw):
    msg = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": _png()}}, {"type": "text", "text": "How many?"}],
    }
    return {"model": "m", "messages": [msg], **kw}


def test_valid_request_becomes_an_engine_request():
    chat = parse_chat_request(_body(n=2, temperature=0.5, max_tokens=32, stop="\n", seed=3, stream=True), ["m"], LIMITS)
    model, req = chat.model, chat.request
    assert model == "m" and chat.stream is True and chat.include_usage is False
    assert req.messages[0]["content"][0] == {"type": "image"} and len(req.images) == 1
    s = req.sampling
    assert (s.n, s.temperature, s.max_tokens, s.stop, s.seed) == (2, 0.5, 32, ["\n"], 3)
    assert parse_chat_request(_body(max_completion_tokens=7), ["m"], LIMITS).request.sampling.max_tokens == 7


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
        # caps from config (serve.max_messages, max_images_per_request, max_stop)
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}] * 4}, 400, "too_many_messages"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png()}}] * 3}],
            },
            400,
            "too_many_images",
        ),
        (_body(stop=["a", "b", "c"]), 400, "invalid_value"),
        (_body(stream_options={"include_usage": True}), 400, "invalid_value"),
        (_body(stream=True, stream_options={"include_usage": "yes"}), 400, "invalid_value"),
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
    assert split_reasoning("<think>cut short") == ("cut short", "")
    result = GenerationResult("id1", prompt_tokens=10, completions=[Completion(text, [1, 2, 3], None, "stop")])
    body = chat_response("m", result)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Answer: \\boxed{2}",
        "reasoning_content": "count: 2 red",
    }
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    # Streamed in pieces cut anywhere (inside the tags too), two choices interleaved.
    stream = ChatStream("m", "id1", prompt_tokens=10, include_usage=True)
    events = []
    for start in range(0, len(text), 3):
        last = start + 3 >= len(text)
        piece = text[start : start + 3]
        events += stream.events(
            [CompletionDelta(0, piece, [7], "stop" if last else None), CompletionDelta(1, piece.upper(), [7])]
        )
    events += stream.events([CompletionDelta(1, "", [], "length")])
    events += stream.end()
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2 * len(range(0, len(text), 3)),
        "total_tokens": 10 + 2 * len(range(0, len(text), 3)),
    }
    deltas = [c["choices"][0] for c in chunks[:-1]]
    for index, whole in ((0, text), (1, text.upper())):
        mine = [d for d in deltas if d["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        reasoning, content = split_reasoning(whole)
        assert "".join(d["delta"].get("content", "") for d in mine) == content
        assert "".join(d["delta"].get("reasoning_content", "") for d in mine) == (reasoning or "")
        assert [d["finish_reason"] for d in mine if d["finish_reason"]] == ["stop" if index == 0 else "length"]
    assert len([d for d in deltas if d["index"] == 0 and d["delta"].get("reasoning_content")]) > 1  # incremental


def test_caps_on_body_and_decoded_pixels(monkeypatch):
    with pytest.raises(APIError) as err:
        parse_chat_body(b" " * 50_001, ["m"], LIMITS)
    assert (err.value.status, err.value.code) == (413, "request_too_large")
    # 200x200 is a few hundred bytes of PNG but 40,000 pixels decoded: refused from the header, before decoding.
    big = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    big["messages"][0]["content"][0]["image_url"]["url"] = _png((200, 200))
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(APIError) as err:
        parse_chat_request(big, ["m"], LIMITS)
    assert (err.value.status, err.value.code) == (413, "image_too_large") and "max_image_pixels" in err.value.message
    assert decoded == []
    monkeypatch.undo()
    # PIL's own guard, lowered to the cap, also holds for decodes elsewhere in the process.
    from r1v_ray.serve.openai_api import cap_decoded_pixels

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    cap_decoded_pixels(10_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(base64.b64decode(_png((200, 200)).split(",")[1])))


def test_vllm_rules_reject_what_the_engine_would_fail_on():
    """vLLM's own SamplingParams checks, before a request reaches the engine (HTTP 400 at the ingress)."""
    from r1v_ray.engines.rollout.types import RequestRejected
    from r1v_ray.engines.rollout.vllm_async import sampling_params

    for bad, reason in (
        (Sampling(n=2, temperature=0.0), "n must be 1 when using greedy sampling"),
        (Sampling(top_p=0.0), "top_p must be in (0, 1]"),
        (Sampling(stop=[""]), "stop cannot contain an empty string"),
    ):
        with pytest.raises(RequestRejected, match=re.escape(reason)):
            sampling_params(bad)
    params = sampling_params(Sampling(n=3, temperature=0.7, stop=["\n"], max_tokens=9, seed=1))
    assert (params.n, params.max_tokens, params.stop, params.detokenize) == (3, 9, ["\n"], True)


def test_rejected_generation_is_a_400():
    with pytest.raises(APIError) as err:
        check_result(GenerationResult("x", error="prompt too long: 900 tokens"))
    assert err.value.code == "context_length_exceeded"


def test_discover_checkpoints_in_a_run_directory(tiny_checkpoint, tmp_path):
    """The layout the stages write (stages/sft.py, grpo/trainer.py), with what else lies beside the models."""
    import os
    import shutil

    from r1v_ray.serve.app import discover_checkpoints

    def checkpoint(*parts):
        shutil.copytree(tiny_checkpoint, tmp_path.joinpath(*parts), copy_function=os.link)

    for sub in ("full", "curated", "cot"):  # mlp_init's sub-stages, each trained at <name>/model
        checkpoint("mlp_init", sub, "model")
    checkpoint("mlp_init", "assembled")  # the freshly assembled model, saved in place
    checkpoint("mlp_init", "model")
    checkpoint("reassemble", "model")
    for t in (0, 1):
        checkpoint("sft", f"M{t}", "model")
    checkpoint("sft", "model")
    checkpoint("grpo", "checkpoints", "step-20", "model")
    checkpoint("grpo", "model")
    # Not checkpoints: the learner's DeepSpeed state next to a GRPO checkpoint, eval reports, data.
    ds = tmp_path / "grpo" / "checkpoints" / "step-20" / "ds" / "state"
    ds.mkdir(parents=True)
    (ds / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tmp_path / "grpo" / "checkpoints" / "latest").write_text('{"step": 20}')
    (tmp_path / "sft" / "eval" / "M1").mkdir(parents=True)
    (tmp_path / "sft" / "eval" / "M1" / "eval.json").write_text("{}")
    (tmp_path / "score" / "data").mkdir(parents=True)
    found = discover_checkpoints(str(tmp_path))
    assert list(found) == [
        "grpo",
        "grpo/checkpoints/step-20",
        "mlp_init",
        "mlp_init/assembled",
        "mlp_init/cot",
        "mlp_init/curated",
        "mlp_init/full",
        "reassemble",
        "sft",
        "sft/M0",
        "sft/M1",
    ]
    assert found["sft/M1"] == str(tmp_path / "sft" / "M1" / "model")
    assert found["grpo/checkpoints/step-20"] == str(tmp_path / "grpo" / "checkpoints" / "step-20" / "model")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("serve.max_image_pixels=0", "serve.max_image_pixels must be at least 1"),
        ("serve.gpu_memory_per_model=1.5", "serve.gpu_memory_per_model must be in (0, 0.95]"),
        ("serve.stream_interval_s=5", "serve.stream_interval_s must be in [0, 1]"),
    ],
)
def test_serve_caps_are_checked_when_loaded(override, needle):
    from r1v_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, [override])


def test_engines_share_a_gpu_by_explicit_fractions():
    from r1v_ray.config import R1VConfig
    from r1v_ray.engines.rollout.vllm_engine import engine_kwargs
    from r1v_ray.serve.app import gpu_memory_fraction

    cfg = R1VConfig()
    cfg.rollout.device, cfg.rollout.gpu_memory_utilization, cfg.serve.max_models_per_replica = "cuda", 0.8, 2
    assert gpu_memory_fraction(cfg) == 0.4  # split evenly: two engines fit on one GPU
    cfg.serve.gpu_memory_per_model = 0.3
    assert gpu_memory_fraction(cfg) == 0.3
    assert engine_kwargs("ckpt", cfg.rollout, "bfloat16", 0.3)["gpu_memory_utilization"] == 0.3
    cfg.serve.gpu_memory_per_model = 0.6
    with pytest.raises(ValueError, match="serve.max_models_per_replica=2"):
        gpu_memory_fraction(cfg)  # 2 x 0.6 of one GPU cannot coexist
    cfg.rollout.device = "cpu"
    assert gpu_memory_fraction(cfg) is None


@pytest.mark.parametrize("num_workers", [1, 2])
def test_every_replica_gets_serves_direct_ingress_settings(num_workers):
    """Serve reads them from a replica's environment at its start: the ingress replica must carry them
    (and the engine replicas, which then run user code on their main loop), besides vLLM's own."""
    from r1v_ray.config import R1VConfig
    from r1v_ray.serve.app import build_app
    from r1v_ray.serve.endpoint import INGRESS_PORTS, proxy_port, serve_env

    cfg = R1VConfig()
    cfg.rollout.backend, cfg.rollout.device, cfg.rollout.num_workers = "vllm", "cpu", num_workers
    cfg.serve.port = 9100
    env = serve_env(cfg.serve)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # serve.port is the first ingress port; the proxy's is outside the range the replicas draw from
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]) == 9100
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == 9100 + INGRESS_PORTS <= proxy_port(cfg.serve)
    app = build_app({"m": "/ckpt"}, cfg, "digest")
    deployments = [app._bound_deployment] + [
        a._bound_deployment for a in app._bound_deployment.init_args if hasattr(a, "_bound_deployment")
    ]
    assert len(deployments) == num_workers  # one replica: ingress and engine share it
    for d in deployments:
        actor_env = d.ray_actor_options["runtime_env"]["env_vars"]
        assert env.items() <= actor_env.items()
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" in deployments[-1].ray_actor_options["runtime_env"]["env_vars"]
