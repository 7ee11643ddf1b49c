"""GRPO: pure algorithm functions (`algorithms`, `advantages`), the learner actors (`learner`), the batch
layout (`batch`), rewards (`reward`), the prompt sampler and sample buffer, and the driver (`trainer`)."""

from r1v_ray.grpo.advantages import group_advantages

__all__ = ["group_advantages"]
