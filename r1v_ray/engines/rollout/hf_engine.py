"""Hugging Face `generate` rollout backend: the fallback where vLLM is not available."""

from __future__ import annotations

import torch

from r1v_ray.config import RolloutConfig
from r1v_ray.engines.rollout.types import Completion, GenerationResult, RolloutEngine, resolve_device
from r1v_ray.prompts import GenerationRequest, PromptBuilder, RequestRejected


class HFEngine(RolloutEngine):
    def __init__(self, checkpoint: str, cfg: RolloutConfig, dtype: str = "float32"):
        self.device, self.dtype, self.max_model_len = resolve_device(cfg.device), dtype, cfg.max_model_len
        self.load_checkpoint(checkpoint)

    def load_checkpoint(self, checkpoint: str) -> None:
        from r1v_ray.model.assemble import load_checkpoint

        self.model, self.processor = load_checkpoint(checkpoint, dtype=self.dtype, device=self.device)
        self.tokenizer = self.processor.tokenizer
        self.prompts = PromptBuilder(self.processor, self.max_model_len)

    def _inputs(self, text: str, images: list) -> dict:
        kwargs = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        return {k: v.to(self.device) for k, v in self.processor(**kwargs).items()}

    @torch.no_grad()
    def _generate_one(self, req: GenerationRequest) -> GenerationResult:
        result = GenerationResult(req.request_id)
        try:
            text, images, n_tokens = self.prompts.render(req)
        except RequestRejected as exc:
            result.error = str(exc)
            return result
        result.prompt_tokens = n_tokens
        s = req.sampling
        inputs = self._inputs(text, images)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        greedy = s.temperature == 0.0
        out = self.model.generate(
            **inputs,
            max_new_tokens=s.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p,
            top_k=None,
            repetition_penalty=s.repetition_penalty,
            num_return_sequences=s.n,
            stop_strings=s.stop,
            tokenizer=self.tokenizer if s.stop else None,
            output_logits=s.logprobs,
            return_dict_in_generate=True,
            bad_words_ids=self.prompts.banned_ids or None,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        start = inputs["input_ids"].shape[1]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for i in range(s.n):
            ids = out.sequences[i, start:].tolist()
            finish = "length"
            if eos in ids:
                ids, finish = ids[: ids.index(eos) + 1], "stop"
            ids = [t for t in ids if t != pad] if pad != eos else ids
            logprobs = None
            if s.logprobs:  # raw (unprocessed) logits, as vLLM reports by default
                logprobs = [torch.log_softmax(out.logits[k][i].float(), -1)[t].item() for k, t in enumerate(ids)]
            text_out = self.tokenizer.decode(ids, skip_special_tokens=True)
            if s.stop:
                for stop in s.stop:
                    if stop in text_out:
                        text_out, finish = text_out[: text_out.index(stop)], "stop"
            result.completions.append(Completion(text_out, ids, logprobs, finish))
        return result

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [self._generate_one(r) for r in requests]

    def update_weights(self, named_tensors: dict) -> None:
        params = dict(self.model.named_parameters())
        unknown = [n for n in named_tensors if n not in params]
        if unknown:
            raise KeyError(f"update_weights: no parameter named {unknown[:3]} in the model")
        with torch.no_grad():
            for name, tensor in named_tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    @torch.no_grad()
    def sequence_logprobs(self, request: GenerationRequest, completion_ids: list[int]) -> list[float]:
        text, images, _ = self.prompts.render(request)
        inputs = self._inputs(text, images)
        completion = torch.tensor([completion_ids], device=self.device)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], completion], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        logits = self.model(**inputs).logits[0].float()
        n = len(completion_ids)
        logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
        return logp.gather(1, completion.T).squeeze(1).tolist()
