"""vLLM's `AsyncLLM` behind the rollout engine's request and result types: the serving path.

Every request is its own engine request. vLLM batches the running requests continuously (each
step serves all of them; a new request joins at the next step), its output streams as deltas as
tokens are generated, and a caller that goes away (a client that disconnected) aborts its
request. A request is checked before it reaches the engine, by vLLM's own `SamplingParams` rules
and the prompt-length rule every engine here applies, so a bad one is rejected alone.

The batch engine (`VLLMEngine`, one `LLM.generate` over a list of requests) stays the path for
Ray Data passes and GRPO rollouts: every request is known up front, and its engine runs
in-process, where weight updates (`reload_weights`) and sequence log-probs reach it. On one batch
of 64 image requests the two paths measured the same within this host's noise
(`benchmarks/serve.py --engines`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator

from r1v_ray.config import RolloutConfig
from r1v_ray.engines.rollout.types import (
    Completion,
    CompletionDelta,
    GenerationRequest,
    GenerationResult,
    PromptBuilder,
    RequestRejected,
    Sampling,
)
from r1v_ray.engines.rollout.vllm_engine import (
    _with_images,
    engine_kwargs,
    quiet_expected_vllm_warnings,
    vllm_env,
)
from r1v_ray.engines.rollout.vllm_engine import (
    sampling_params as vllm_sampling_params,
)


def sampling_params(s: Sampling, stream: bool = True):
    """vLLM's SamplingParams for a request: streaming deltas, or (stream=False) only the final output;
    vLLM's own validation errors become RequestRejected (n > 1 with greedy sampling, top_p = 0, an
    empty stop string, ...)."""
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind

    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    try:
        return vllm_sampling_params(s, output_kind=kind)
    except (VLLMClientError, ValueError, TypeError) as exc:
        raise RequestRejected(str(exc)) from None


class AsyncVLLMEngine:
    """One checkpoint on vLLM's AsyncLLM. `gpu_memory_utilization` is this engine's share of the GPU."""

    def __init__(
        self, checkpoint: str, cfg: RolloutConfig, dtype: str = "bfloat16", gpu_memory_utilization: float | None = None
    ):
        for key, value in vllm_env(cfg).items():
            os.environ.setdefault(key, value)
        from transformers import AutoProcessor
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        quiet_expected_vllm_warnings()
        kwargs = engine_kwargs(checkpoint, cfg, dtype, gpu_memory_utilization)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, disable_log_stats=True))
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.prompts = PromptBuilder(self.processor, cfg.max_model_len)
        self.inflight = 0  # requests between admission and their last delta
        self.aborted = 0  # requests whose caller went away before the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationResult | list[CompletionDelta]]:
        """First a GenerationResult without completions (prompt_tokens; `error` set when the request is
        rejected, and then nothing follows), then lists of new output per choice until every choice ends."""
        return self._outputs(request, stream=True)

    async def _outputs(self, request: GenerationRequest, stream: bool):
        """The header, then vLLM's outputs: deltas as generated, or (stream=False) one at the end."""
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        if self._closed:
            raise RuntimeError("engine is shut down")
        try:
            params = sampling_params(request.sampling, stream)
            # Rendering decodes images and tokenizes: off the event loop that streams every other request.
            text, images, n_tokens = await asyncio.to_thread(self.prompts.render, request)
        except RequestRejected as exc:
            yield GenerationResult(request.request_id, error=str(exc))
            return
        outputs = self.llm.generate(_with_images({"prompt": text}, images), params, request.request_id)
        self.inflight += 1
        try:
            try:
                first = await anext(outputs)  # admission checks run here; nothing was sent to the client yet
            except Exception as exc:
                if not _is_client_error(exc):
                    raise
                yield GenerationResult(request.request_id, error=str(exc))
                return
            yield GenerationResult(request.request_id, prompt_tokens=n_tokens)
            yield _deltas(first)
            async for out in outputs:
                yield _deltas(out)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise
        finally:
            self.inflight -= 1
            await outputs.aclose()  # vLLM aborts the request when its generator closes early

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole result of one request (the same type the batch engines return). vLLM sends only
        the final output: no Python step per token, as in vLLM's own server for non-streamed requests."""
        result, texts, ids, finish = None, {}, {}, {}
        async for item in self._outputs(request, stream=False):
            if isinstance(item, GenerationResult):
                result = item
                continue
            for d in item:
                texts[d.index] = texts.get(d.index, "") + d.text
                ids.setdefault(d.index, []).extend(d.token_ids)
                finish[d.index] = d.finish_reason or finish.get(d.index)
        result.completions = [Completion(texts[i], ids[i], None, finish[i]) for i in sorted(texts)]
        return result

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stop the engine and free its memory (its engine core process exits). From another thread
        than the serving loop's (Serve's eviction), the running requests get `drain_timeout_s` to finish."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            self.llm.shutdown()
            return
        deadline = time.monotonic() + drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        # The engine's sockets belong to the loop that serves it: close them there.
        asyncio.run_coroutine_threadsafe(self._shutdown_on_loop(), loop).result(timeout=120)

    async def _shutdown_on_loop(self) -> None:
        self.llm.shutdown()

    # Serve's model multiplexing calls __del__ (in a thread) when it evicts a model.
    def __del__(self):
        if hasattr(self, "llm"):
            self.shutdown()


def _deltas(out) -> list[CompletionDelta]:
    return [CompletionDelta(c.index, c.text, list(c.token_ids), c.finish_reason) for c in out.outputs]


def _is_client_error(exc: BaseException) -> bool:
    from vllm.exceptions import VLLMClientError

    return isinstance(exc, (VLLMClientError, ValueError))
