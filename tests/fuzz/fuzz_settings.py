"""Hypothesis profiles for the fuzz suite: `ci` (the default) is derandomized and bounded, so a run is reproducible
and the whole suite stays well under two minutes on 2 cores; `deep` (R1V_FUZZ_PROFILE=deep) is random with 20x
the examples, for a longer hunt."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("R1V_FUZZ_PROFILE", "ci")
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("deep", database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE)


def examples(n: int, deadline_s: float | None = None) -> settings:
    """@examples(n): n examples under the ci profile, 20n under deep; `deadline_s` bounds each call."""
    return settings(
        max_examples=n * (20 if PROFILE == "deep" else 1),
        deadline=None if deadline_s is None else timedelta(seconds=deadline_s),
    )
