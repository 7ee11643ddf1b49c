"""tests/e2e/paper_effects.py: each of the paper's effects is a check that fails with its numbers."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))

from paper_effects import effect_failures  # noqa: E402

SHOWN = {
    "chance": 20.0,
    "mlp_init": 50.0,
    "reassembled": 40.0,
    "iterative": [45.0, 46.0, 44.0],  # M2 within the slack of M1
    "grpo": 47.0,
    "grpo_ci_lo": 0.4,
    "distilled_by": "run/reassemble/model",
    "reassembled_model": "run/reassemble/model",
    "rm_histogram": {0: 0, 1: 0, 2: 10, 3: 50, 4: 100, 5: 352},
    "d_rm_by_tau": {1: 512, 2: 512, 3: 502, 4: 452, 5: 352},
    "d_rm_rows": [512, 470],
    "error_sets": [300, 250],
    "grpo_heldout_lengths": [40.4, 40.6, 40.7, 40.9],
    "grpo_length_slope": 0.005,
    "penalty_length_correlation": [-0.2, -0.1, None],
}


def test_a_run_that_shows_every_effect_passes():
    assert effect_failures(SHOWN) == []


def test_each_missing_effect_is_named():
    cases = {
        "distillation ran with": {"distilled_by": "run/mlp_init/assembled"},
        "above chance": {"reassembled": 25.0},
        "below half of MLP-init": {"mlp_init": 85.0},
        "M0 45.00 not": {"reassembled": 44.0, "mlp_init": 50.0},
        "M2 40.00 fell": {"iterative": [45.0, 46.0, 40.0]},
        "GRPO 44.10 not": {"grpo": 44.1},
        "CI's low end": {"grpo_ci_lo": -0.2},
        "length on the held-out prompts does not rise": {"grpo_length_slope": -0.01},
        "[40.4, 41.2, 41.0, 40.3]": {"grpo_heldout_lengths": [40.4, 41.2, 41.0, 40.3]},  # a rise, then back below
        "[], slope None": {"grpo_heldout_lengths": [], "grpo_length_slope": None},
        "does not shorten": {"penalty_length_correlation": [-0.2, 0.1, None]},
        "fewer than 3 values": {"rm_histogram": {5: 500, 4: 12}},
        "barely falls": {"d_rm_by_tau": {1: 512, 2: 512, 3: 512, 4: 512, 5: 500}},
        "iterations does not fall": {"d_rm_rows": [512, 512]},
        "|E_t| does not fall": {"error_sets": [300, 301]},
    }
    for needle, change in cases.items():
        failures = effect_failures({**SHOWN, **change})
        assert len(failures) == 1 and needle in failures[0], (needle, failures)
