"""The rollout engine's interface: results, the engine base class, device choice.

The request side (Sampling, GenerationRequest, RequestRejected, PromptBuilder and
image decoding) lives in `r1v_ray.prompts`, below the engines; its names are
re-exported here so `r1v_ray.engines.rollout.types` imports keep working.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from r1v_ray.prompts import (
    GenerationRequest,
    PromptBuilder,
    RequestRejected,
    Sampling,
    decode_image,
    image_placeholder_ids,
    split_images,
)

__all__ = [
    "Completion",
    "CompletionDelta",
    "GenerationRequest",
    "GenerationResult",
    "PromptBuilder",
    "RequestRejected",
    "RolloutEngine",
    "Sampling",
    "decode_image",
    "image_placeholder_ids",
    "resolve_device",
    "split_images",
]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None


@dataclass
class CompletionDelta:
    """New output of one choice of a streamed request: text and token ids since the last delta."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class GenerationResult:
    request_id: str
    prompt_tokens: int = 0
    # Of those, the ones whose KV came from the engine's prefix cache (vLLM; for n > 1, one sample's count).
    cached_prompt_tokens: int = 0
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set when the request was rejected; completions is then empty

    @property
    def ok(self) -> bool:
        return self.error is None


def resolve_device(device: str) -> str:
    """rollout.device "auto" means CUDA when torch sees a GPU, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class RolloutEngine(ABC):
    """Generation backends: vLLM (CPU or GPU) and Hugging Face `generate`."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    @abstractmethod
    def update_weights(self, named_tensors: dict) -> None:
        """Load (a subset of) HF-named tensors in place; later generations use them."""

    @abstractmethod
    def load_checkpoint(self, checkpoint: str) -> None:
        """Every weight of a local checkpoint folder in place of the current ones (same architecture and
        tokenizer: `RolloutWorker.load_checkpoint` checks); later generations use them."""

    @abstractmethod
    def sequence_logprobs(self, request: GenerationRequest, completion_ids: list[int]) -> list[float]:
        """Log-probs the current weights give `completion_ids` after the request's prompt."""

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        """Join the NCCL weight-sync group (GPU vLLM only); returns the number of ranks this engine holds."""
        raise NotImplementedError(
            f"grpo.weight_sync=nccl needs rollout.backend=vllm on CUDA, not {type(self).__name__}"
        )

    def receive_weights(self, meta: list) -> None:
        """Receive the tensors `meta` names from the NCCL group's rank 0 and load them in place."""
        raise NotImplementedError(
            f"grpo.weight_sync=nccl needs rollout.backend=vllm on CUDA, not {type(self).__name__}"
        )
