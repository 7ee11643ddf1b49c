"""Ray Serve app: checkpoints of a run behind an OpenAI-compatible API.

Two deployments:

* `ModelServer` holds engines, loaded on demand per model id with Serve model multiplexing
  (`@serve.multiplexed`, LRU per replica). With vLLM each is an `AsyncVLLMEngine`: requests are
  batched continuously inside the engine and stream token by token; each engine takes its own
  explicit share of the GPU's memory, and an evicted one is shut down, which frees it.
* `OpenAIIngress` (FastAPI) checks the bearer token, reads and validates the OpenAI body off its
  event loop (4xx with OpenAI-style errors; the app keeps serving), and routes each request to a
  replica holding that model (`handle.options(multiplexed_model_id=...)`).

With one engine replica (rollout.num_workers=1) the two share one deployment (the ingress holds
the ModelServer in-process), and clients reach that replica directly (Ray Serve's direct ingress,
`r1v_ray.serve.endpoint`): a request and its stream then cross no Ray hop at all between the HTTP
connection and the engine, as in vLLM's own server (benchmarks/serve.py).

Multiplexing rather than `ray.serve.llm`: a run directory holds many checkpoints of one
architecture (`mlp_init`, `sft/M0` .. `sft/M<T>`, `sft`, `grpo/checkpoints/step-<N>`, `grpo`: see
`discover_checkpoints`); loading them on demand into a bounded number of engines per replica
serves all of them from the same resources.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import weakref

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.engines.rollout import make_engine
from r1v_ray.engines.rollout.actor import worker_resources, worker_runtime_env
from r1v_ray.engines.rollout.types import CompletionDelta, GenerationRequest, GenerationResult, resolve_device
from r1v_ray.serve.endpoint import serve_env
from r1v_ray.serve.openai_api import (
    APIError,
    ChatRequest,
    Limits,
    cap_decoded_pixels,
    chat_response,
    check_result,
    models_response,
    parse_chat_body,
)
from r1v_ray.serve.streaming import ChatStream


def token_digest(token: str) -> str:
    """Only this digest reaches the deployments (and so Serve's config): never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def gpu_memory_fraction(cfg: R1VConfig) -> float | None:
    """Each engine's share of its GPU's memory (None on CPU): serve.gpu_memory_per_model, or
    rollout.gpu_memory_utilization split evenly among the engines a replica may hold."""
    if resolve_device(cfg.rollout.device) != "cuda":
        return None
    share = cfg.serve.gpu_memory_per_model or cfg.rollout.gpu_memory_utilization / cfg.serve.max_models_per_replica
    if share * cfg.serve.max_models_per_replica > 0.95:
        raise ValueError(
            f"serve.gpu_memory_per_model={share} x serve.max_models_per_replica={cfg.serve.max_models_per_replica} "
            "is more than 0.95 of the GPU: lower one of them"
        )
    return share


class BatchedEngine:
    """A batch engine (rollout.backend=hf) behind the serving interface: concurrent requests are
    batched into one engine call; a stream gets each completion whole."""

    def __init__(self, engine, max_batch_size: int):
        self.engine = engine
        self.inflight = self.aborted = 0
        self.closed = False
        self._lock = asyncio.Lock()
        self._batch = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=0.02)(self._generate_many)

    async def _generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        async with self._lock:  # one engine call at a time: the engines are not thread-safe
            return await asyncio.to_thread(self.engine.generate, requests)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self._batch(request)

    async def stream(self, request: GenerationRequest):
        result = await self.generate(request)
        yield GenerationResult(result.request_id, prompt_tokens=result.prompt_tokens, error=result.error)
        if result.ok:
            yield [CompletionDelta(i, c.text, c.token_ids, c.finish_reason) for i, c in enumerate(result.completions)]


def load_serving_engine(checkpoint: str, cfg: R1VConfig):
    checkpoint = store.stage_in(checkpoint, cfg.scratch_dir)  # on an object store: this node's scratch copy
    if cfg.rollout.backend == "vllm":
        from r1v_ray.engines.rollout.vllm_async import AsyncVLLMEngine

        return AsyncVLLMEngine(checkpoint, cfg.rollout, cfg.model.dtype, gpu_memory_fraction(cfg))
    return BatchedEngine(make_engine(checkpoint, cfg.rollout, cfg.model.dtype), cfg.serve.max_batch_size)


def process_tree_rss_mib() -> float:
    """This process's resident memory and its children's (vLLM's engine core runs in a child)."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class ModelServer:
    def __init__(self, models: dict[str, str], cfg: R1VConfig):
        self.models = models
        self.stream_interval_s = cfg.serve.stream_interval_s
        cap_decoded_pixels(cfg.serve.max_image_pixels)
        self.loaded = weakref.WeakValueDictionary()  # model id -> engine, while Serve holds it
        self.loads: list[dict] = []  # what each load found: which engines were still loaded, and the memory

        async def load(model_id: str):
            # Serve has already evicted (shut down) the least recently used engine when this runs.
            self.loads.append({"model": model_id, "loaded": self._live(), "rss_mib": process_tree_rss_mib()})
            # Loading blocks for seconds; keep the replica's event loop free meanwhile.
            engine = await asyncio.to_thread(load_serving_engine, models[model_id], cfg)
            self.loaded[model_id] = engine
            return engine

        # Sizes come from config, so the Serve decorator is applied per instance
        # (multiplexing to a plain function: Serve caches its LRU state on the function).
        self.get_engine = serve.multiplexed(max_num_models_per_replica=cfg.serve.max_models_per_replica)(load)

    async def generate(self, model_id: str, request: GenerationRequest) -> GenerationResult:
        engine = await self.get_engine(model_id)
        return await engine.generate(request)

    async def stream(self, model_id: str, request: GenerationRequest):
        """A GenerationResult header (prompt_tokens, or the rejection), then lists of CompletionDelta."""
        engine = await self.get_engine(model_id)
        finished: set[int] = set()
        async for item in engine.stream(request):
            yield item
            if isinstance(item, GenerationResult):  # the header and the first tokens go out at once
                continue
            finished.update(d.index for d in item if d.finish_reason is not None)
            if len(finished) < request.sampling.n:  # and the last ones as soon as they come
                # Every item is a message on its way to the client (a Ray object between processes). Pausing
                # lets the tokens generated meanwhile merge into one (vLLM's output collector merges deltas).
                await asyncio.sleep(self.stream_interval_s)

    def _live(self) -> list[str]:
        return sorted(m for m, e in self.loaded.items() if not e.closed)

    def stats(self) -> dict:
        """Loaded engines' in-flight and aborted requests, each load's view, and this replica's memory."""
        return {
            "engines": {
                m: {"inflight": e.inflight, "aborted": e.aborted} for m, e in self.loaded.items() if not e.closed
            },
            "loads": self.loads,
            "rss_mib": process_tree_rss_mib(),
        }


def discover_checkpoints(run_dir: str) -> dict[str, str]:
    """{model id: path or URI} for every R1V checkpoint under `run_dir` (a local folder or an object-store
    URI, listed once); the id is the relative path without a trailing `/model`. In a run directory:
    `mlp_init` (and its sub-stages `mlp_init/full`, ...), `reassemble`, `sft/M0` .. `sft/M<T>` and `sft`
    (the last), `grpo/checkpoints/step-<N>` and `grpo` (the last)."""
    files: dict[str, set[str]] = {}
    for rel in store.listing(run_dir):
        folder, _, name = rel.rpartition("/")
        files.setdefault(folder, set()).add(name)
    found = {}
    for folder, names in files.items():
        if "config.json" not in names or not any(
            n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names
        ):
            continue
        path = store.join(run_dir, folder) if folder else run_dir
        if store.read_json(store.join(path, "config.json")).get("model_type") != "internvl":
            continue
        found[folder.removesuffix("/model") if folder not in ("model", "") else "model"] = path
    return dict(sorted(found.items()))


api = FastAPI(title="r1v_ray", docs_url=None, redoc_url=None, openapi_url=None)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as it passes `max_bytes`, whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"request body larger than {max_bytes} bytes (serve.max_body_bytes)", "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(
                413, f"request body larger than {max_bytes} bytes (serve.max_body_bytes)", "request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    # An engine failure: an OpenAI-style 500 (no details to the client), and the ingress keeps serving.
    return APIError(500, f"generation failed: {type(exc).__name__}", "internal_error")


def _error_response(exc: Exception) -> JSONResponse:
    err = _api_error(exc)
    return JSONResponse(err.body(), status_code=err.status)


@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, server, model_ids: list[str], token_sha256: str, limits: Limits, local: tuple | None = None):
        # `server`: the ModelServer deployment's handle; or None with `local` = (models, cfg) for one in-process.
        self.server = server
        self.local = ModelServer(*local) if local is not None else None
        self.model_ids = model_ids
        self.token_sha256 = token_sha256
        self.limits = limits
        cap_decoded_pixels(limits.max_image_pixels)

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
            return _error_response(err)
        return models_response(self.model_ids)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            self._authorize(request)
            raw = await read_body(request, self.limits.max_body_bytes)
            # JSON parsing and image decoding off the event loop that serves every other request.
            chat = await asyncio.to_thread(parse_chat_body, raw, self.model_ids, self.limits)
            if not chat.stream:
                result = await self._generate(chat)
                check_result(result)
                return chat_response(chat.model, result)
            items = self._stream(chat)
            header = await anext(items)  # the engine's verdict, before a byte of the stream is sent
            check_result(header)
        except Exception as exc:
            return _error_response(exc)
        return StreamingResponse(self._events(chat, header, items), media_type="text/event-stream")

    async def _generate(self, chat: ChatRequest) -> GenerationResult:
        if self.local is not None:
            return await self.local.generate(chat.model, chat.request)
        return await self.server.options(multiplexed_model_id=chat.model).generate.remote(chat.model, chat.request)

    def _stream(self, chat: ChatRequest):
        if self.local is not None:
            return self.local.stream(chat.model, chat.request)
        handle = self.server.options(multiplexed_model_id=chat.model, stream=True)
        return handle.stream.remote(chat.model, chat.request)

    async def stats(self) -> dict:
        """The engine replica's stats (ModelServer.stats; one replica's when there are several)."""
        return self.local.stats() if self.local is not None else await self.server.stats.remote()

    async def _events(self, chat: ChatRequest, header: GenerationResult, items):
        stream = ChatStream(chat.model, header.request_id, header.prompt_tokens, chat.include_usage)
        finished = False
        try:
            async for deltas in items:
                yield "".join(stream.events(deltas))  # one HTTP write per item, however many chunks it holds
            finished = True
            yield "".join(stream.end())
        except Exception as exc:  # the engine failed mid-stream: an error event, then the end
            finished = True
            yield f"data: {json.dumps(_api_error(exc).body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: abort the request in its engine
                if self.local is not None:
                    await items.aclose()
                else:
                    items.cancel()


def build_app(models: dict[str, str], cfg: R1VConfig, token_sha256: str):
    """The Serve application for `models` ({model id: checkpoint path})."""
    if not models:
        raise ValueError("no checkpoints to serve: set serve.models or point run_dir at a run with checkpoints")
    gpu_memory_fraction(cfg)  # a bad split fails here, not in a replica
    bundle = worker_resources(cfg.rollout)
    runtime_env = worker_runtime_env(cfg.rollout)
    runtime_env["env_vars"] = {**runtime_env["env_vars"], **serve_env(cfg.serve)}
    engine_options = dict(
        # Serve's default (5) would queue requests in front of an engine that batches hundreds.
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
            "runtime_env": runtime_env,
        },
    )
    serve_cfg = cfg.serve
    limits = Limits(
        max_image_bytes=serve_cfg.max_image_bytes,
        allow_remote_images=serve_cfg.allow_remote_images,
        max_n=serve_cfg.max_n,
        max_tokens=cfg.rollout.max_model_len,
        max_images=min(serve_cfg.max_images_per_request, cfg.rollout.max_images_per_prompt),
        max_image_pixels=serve_cfg.max_image_pixels,
        max_messages=serve_cfg.max_messages,
        max_stop=serve_cfg.max_stop,
        max_body_bytes=serve_cfg.max_body_bytes,
    )
    ingress = serve.deployment(OpenAIIngress, name="OpenAIIngress")
    if cfg.rollout.num_workers == 1:  # one replica: ingress and engines in one process
        return ingress.options(num_replicas=1, **engine_options).bind(
            None, sorted(models), token_sha256, limits, local=(models, cfg)
        )
    server = (
        serve.deployment(ModelServer, name="ModelServer")
        .options(num_replicas=cfg.rollout.num_workers, **engine_options)
        .bind(models, cfg)
    )
    max_ongoing = cfg.serve.max_ongoing_requests * cfg.rollout.num_workers
    ingress_actor = {"num_cpus": 0.1, "runtime_env": {"env_vars": serve_env(cfg.serve)}}
    return ingress.options(ray_actor_options=ingress_actor, max_ongoing_requests=max_ongoing).bind(
        server, sorted(models), token_sha256, limits
    )
