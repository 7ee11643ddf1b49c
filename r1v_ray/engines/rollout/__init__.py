"""The rollout engine: one generation interface for every stage, vLLM or HF behind it."""

from r1v_ray.engines.rollout.hf_engine import HFEngine, make_engine
from r1v_ray.engines.rollout.types import (
    Completion,
    GenerationRequest,
    GenerationResult,
    RequestRejected,
    RolloutEngine,
    Sampling,
)

__all__ = [
    "Completion", "GenerationRequest", "GenerationResult", "HFEngine", "RequestRejected", "RolloutEngine",
    "Sampling", "make_engine",
]
