"""vLLM logits processors of the rollout engine (imported by vLLM, by name, inside its workers)."""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor

from r1v_ray.engines.rollout.types import image_placeholder_ids


class BanImagePlaceholders(LogitsProcessor):
    """Image placeholder tokens are never sampled, by any request: one masked write over the whole batch
    per step (vLLM's per-request `bad_words` loops over the requests in Python)."""

    def __init__(self, vllm_config, device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.ids = torch.tensor(image_placeholder_ids(tokenizer), dtype=torch.long, device=device)

    def is_argmax_invariant(self) -> bool:
        return False  # a banned token may be the argmax

    def update_state(self, batch_update) -> None:
        """Stateless: the same tokens are banned for every request."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.ids.numel():
            logits[:, self.ids] = float("-inf")
        return logits
