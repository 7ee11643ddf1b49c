"""GRPO: pure algorithm functions and (later) the Ray actor topology."""

from r1v_ray.grpo.advantages import group_advantages

__all__ = ["group_advantages"]
