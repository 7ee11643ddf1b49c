"""Adaptive-length CoT distillation (paper section 2.3)."""

from r1v_ray.distill.drlc import repetition_penalty

__all__ = ["repetition_penalty"]
