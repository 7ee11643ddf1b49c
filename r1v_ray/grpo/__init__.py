"""GRPO: pure algorithm functions (`algorithms`, `advantages`), the learner actors (`learner`), the batch
layout (`batch`), rewards (`reward`), the prompt sampler and sample buffer, the
Ray topology (`topology`: placement groups, actors, restarts), each step's rollouts (`rollouts`) and the step
loop (`trainer`)."""

from r1v_ray.grpo.advantages import group_advantages

__all__ = ["group_advantages"]
