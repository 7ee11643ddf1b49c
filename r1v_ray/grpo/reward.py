"""Reward computation in its own workers: the rule rewards, plus user functions given as `module:function`."""

from __future__ import annotations

import importlib
import math

from r1v_ray import answer_check
from r1v_ray.rewards import accuracy_reward, format_reward


def load_function(spec: str):
    """`package.module:function` -> the function; a clear error for a bad spec."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"grpo.reward_functions entry {spec!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"grpo.reward_functions: {spec!r} is not a callable")
    return fn


class RewardWorker:
    """score(items) with items = (completion, answer, choices); returns one dict per item.

    `accuracy_timeout` is 1 for an item whose answer check ran past its deadline (scored 0);
    `timeouts()` is this worker's running total, for the step metrics."""

    def __init__(self, accuracy_weight: float, format_weight: float, functions: list[str]):
        self.accuracy_weight, self.format_weight = accuracy_weight, format_weight
        self.functions = [(spec, load_function(spec)) for spec in functions]

    def score(self, items: list[tuple[str, str, list[str] | None]]) -> list[dict]:
        out = []
        for completion, answer, choices in items:
            before = answer_check.stats()["timeouts"]
            acc, fmt = accuracy_reward(completion, answer, choices), format_reward(completion)
            timed_out = answer_check.stats()["timeouts"] - before
            reward = self.accuracy_weight * acc + self.format_weight * fmt
            extra = {}
            for spec, fn in self.functions:
                extra[spec] = float(fn(completion, answer, choices))
                reward += extra[spec]
            if not math.isfinite(reward):
                raise FloatingPointError(f"reward is {reward} for a completion (user functions: {list(extra)})")
            out.append({"reward": reward, "accuracy": acc, "format": fmt, "accuracy_timeout": timed_out, **extra})
        return out

    def timeouts(self) -> int:
        return answer_check.stats()["timeouts"]
