"""Dynamic Reasoning Length Controller (paper section 2.3, eq. 1)."""

from __future__ import annotations

import math


def repetition_penalty(s_v: float, s_t: float, s_i: float, alpha: float, beta: float, gamma: float) -> float:
    """P = min(2, exp(alpha * (1 - (s_v + beta*s_t + gamma*s_i) / (1 + beta + gamma)))).

    Scores are min-max normalized to [0, 1]: easy, clear queries (high scores) get
    P near 1 (long reasoning allowed); hard-to-integrate ones get a stronger penalty.
    """
    for name, value in (("s_v", s_v), ("s_t", s_t), ("s_i", s_i)):
        if value is None or math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value!r}: normalized scores must lie in [0, 1] (min-max normalize first)")
    if 1.0 + beta + gamma <= 0:
        raise ValueError(f"beta={beta}, gamma={gamma}: 1 + beta + gamma must be positive")
    weighted = (s_v + beta * s_t + gamma * s_i) / (1.0 + beta + gamma)
    return min(2.0, math.exp(alpha * (1.0 - weighted)))
