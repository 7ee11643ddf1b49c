"""Ray Serve app: checkpoints of a run behind an OpenAI-compatible API.

Two deployments:

* `ModelServer` holds rollout engines, loaded on demand per model id with Serve
  model multiplexing (`@serve.multiplexed`, LRU per replica), and batches
  concurrent requests into one engine call (`@serve.batch`).
* `OpenAIIngress` (FastAPI) checks the bearer token, validates the OpenAI body
  (4xx with OpenAI-style errors; the app keeps serving), and routes each request
  to a replica holding that model (`handle.options(multiplexed_model_id=...)`).

Multiplexing rather than `ray.serve.llm`: a run directory holds many
checkpoints of one architecture (mlp_init, sft-t1..T, grpo-step-N); loading them
on demand into a bounded number of engines per replica serves all of them from
the same resources, through the same engine class every other stage uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import defaultdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from r1v_ray.config import R1VConfig
from r1v_ray.engines.rollout import make_engine
from r1v_ray.engines.rollout.actor import worker_resources, worker_runtime_env
from r1v_ray.engines.rollout.types import GenerationRequest, GenerationResult
from r1v_ray.serve.openai_api import (
    APIError,
    Limits,
    chat_response,
    check_result,
    models_response,
    parse_chat_request,
    parse_json,
    stream_events,
)


def token_digest(token: str) -> str:
    """Only this digest reaches the deployments (and so Serve's config): never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class ModelServer:
    def __init__(self, models: dict[str, str], cfg: R1VConfig):
        self.models = models
        self.cfg = cfg
        self._lock = asyncio.Lock()

        async def load(model_id: str):
            # Loading blocks for seconds; keep the replica's event loop free meanwhile.
            return await asyncio.to_thread(make_engine, models[model_id], cfg.rollout, cfg.model.dtype)

        # Sizes come from config, so the Serve decorators are applied per instance
        # (multiplexing to a plain function: Serve caches its LRU state on the function).
        self.get_engine = serve.multiplexed(max_num_models_per_replica=cfg.serve.max_models_per_replica)(load)
        self._generate_batch = serve.batch(max_batch_size=cfg.serve.max_batch_size, batch_wait_timeout_s=0.02)(
            self._generate_many
        )

    async def _generate_many(self, items: list[tuple[str, GenerationRequest]]) -> list[GenerationResult]:
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, (model_id, _) in enumerate(items):
            by_model[model_id].append(i)
        results: list[GenerationResult | None] = [None] * len(items)
        for model_id, indices in by_model.items():
            engine = await self.get_engine(model_id)
            async with self._lock:  # one engine call at a time: the engines are not thread-safe
                outs = await asyncio.to_thread(engine.generate, [items[i][1] for i in indices])
            for i, out in zip(indices, outs):
                results[i] = out
        return results

    async def generate(self, model_id: str, request: GenerationRequest) -> GenerationResult:
        return await self._generate_batch((model_id, request))


def discover_checkpoints(run_dir: str) -> dict[str, str]:
    """{model id: path} for every R1V checkpoint under `run_dir`; the id is the relative path
    without a trailing `/model` (e.g. `mlp_init`, `sft/t2`, `grpo/step-200`)."""
    import json
    import os

    found = {}
    for root, _, files in os.walk(run_dir):
        if "config.json" not in files or not any(
            f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files
        ):
            continue
        with open(os.path.join(root, "config.json")) as f:
            if json.load(f).get("model_type") != "internvl":
                continue
        rel = os.path.relpath(root, run_dir).replace(os.sep, "/")
        found[rel.removesuffix("/model") if rel != "model" else "model"] = root
    return dict(sorted(found.items()))


api = FastAPI(title="r1v_ray", docs_url=None, redoc_url=None)


@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, server, model_ids: list[str], token_sha256: str, limits: Limits):
        self.server = server
        self.model_ids = model_ids
        self.token_sha256 = token_sha256
        self.limits = limits

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token_digest(token.strip()), self.token_sha256):
            raise APIError(401, "missing or invalid bearer token", "invalid_api_key")

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._authorize(request)
        except APIError as err:
            return JSONResponse(err.body(), status_code=err.status)
        return models_response(self.model_ids)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            self._authorize(request)
            model, gen_request, stream = parse_chat_request(
                parse_json(await request.body()), self.model_ids, self.limits
            )
            handle = self.server.options(multiplexed_model_id=model)
            result = await handle.generate.remote(model, gen_request)
            check_result(result)
        except APIError as err:
            return JSONResponse(err.body(), status_code=err.status)
        except Exception as exc:  # an engine failure: an OpenAI-style 500, and the ingress keeps serving
            err = APIError(500, f"generation failed: {type(exc).__name__}", "internal_error")
            return JSONResponse(err.body(), status_code=err.status)
        if stream:
            events = stream_events(model, result)
            return StreamingResponse(iter(events), media_type="text/event-stream")
        return chat_response(model, result)


def build_app(models: dict[str, str], cfg: R1VConfig, token_sha256: str):
    """The Serve application for `models` ({model id: checkpoint path})."""
    if not models:
        raise ValueError("no checkpoints to serve: set serve.models or point run_dir at a run with checkpoints")
    bundle = worker_resources(cfg.rollout)
    server = (
        serve.deployment(ModelServer, name="ModelServer")
        .options(
            num_replicas=cfg.rollout.num_workers,
            ray_actor_options={
                "num_cpus": bundle["CPU"],
                "num_gpus": bundle.get("GPU", 0),
                "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
                "runtime_env": worker_runtime_env(cfg.rollout),
            },
        )
        .bind(models, cfg)
    )
    limits = Limits(
        max_image_bytes=cfg.serve.max_image_bytes,
        allow_remote_images=cfg.serve.allow_remote_images,
        max_n=cfg.serve.max_n,
        max_tokens=cfg.rollout.max_model_len,
    )
    ingress = serve.deployment(OpenAIIngress, name="OpenAIIngress").options(ray_actor_options={"num_cpus": 0.1})
    return ingress.bind(server, sorted(models), token_sha256, limits)
