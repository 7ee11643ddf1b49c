"""The rollout engine: one generation interface for every stage, vLLM or HF behind it."""

from r1v_ray.config import RolloutConfig
from r1v_ray.engines.rollout.hf_engine import HFEngine
from r1v_ray.engines.rollout.types import (
    Completion,
    GenerationRequest,
    GenerationResult,
    RequestRejected,
    RolloutEngine,
    Sampling,
)

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationResult",
    "HFEngine",
    "RequestRejected",
    "RolloutEngine",
    "Sampling",
    "make_engine",
]


def make_engine(checkpoint: str, cfg: RolloutConfig, dtype: str = "bfloat16") -> RolloutEngine:
    """The configured backend for a checkpoint (vLLM is imported only when chosen). A checkpoint on an
    object store is staged into this node's scratch folder first: the engines read local files."""
    from r1v_ray.store import stage_in

    checkpoint = stage_in(checkpoint)
    if cfg.backend == "vllm":
        from r1v_ray.engines.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(checkpoint, cfg, dtype)
    return HFEngine(checkpoint, cfg, dtype)
