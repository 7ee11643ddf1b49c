"""Reward workers: rule rewards with weights, user functions by 'module:function', NaN stops the step."""

import math

import pytest

from r1v_ray.grpo.reward import RewardWorker, load_function
from r1v_ray.grpo.sampler import PromptSampler

GOOD = "<think>\ncount them\n</think>\n\nAnswer: \\boxed{3}"


def length_bonus(completion, answer, choices):
    return 0.01 * len(completion)


def nan_reward(completion, answer, choices):
    return math.nan


def test_rule_rewards_and_user_functions():
    worker = RewardWorker(1.0, 0.5, [f"{__name__}:length_bonus"])
    good, wrong, unformatted = worker.score([(GOOD, "3", None), (GOOD, "4", None), ("Answer: \\boxed{3}", "3", None)])
    assert (good["accuracy"], good["format"]) == (1.0, 1.0)
    assert good["reward"] == pytest.approx(1.5 + 0.01 * len(GOOD))
    assert (wrong["accuracy"], wrong["format"]) == (0.0, 1.0)
    assert (unformatted["accuracy"], unformatted["format"]) == (1.0, 0.0)


def test_nan_reward_stops_with_a_clear_error():
    with pytest.raises(FloatingPointError, match="reward is nan"):
        RewardWorker(1.0, 0.5, [f"{__name__}:nan_reward"]).score([(GOOD, "3", None)])


def test_bad_function_specs():
    with pytest.raises(ValueError, match="package.module:function"):
        load_function("no_colon")
    with pytest.raises(ValueError, match="not a callable"):
        load_function("math:pi")


def test_prompt_sampler_positions_are_exact():
    a = PromptSampler(10, seed=1)
    first = a.take(7) + a.take(7)  # crosses an epoch boundary
    b = PromptSampler(10, seed=1, **{"epoch": 0, "index": 7})
    assert b.take(7) == first[7:]
    assert sorted(first[:10]) == list(range(10)) and a.state()["epoch"] == 1
    assert PromptSampler(10, seed=1, **a.state()).take(5) == a.take(5)


def test_a_draw_across_an_epoch_boundary_never_repeats_a_row():
    """Regression: the tail of one epoch and the head of the next could put one row in a step twice."""
    for seed in range(50):
        sampler = PromptSampler(6, seed=seed)
        for _ in range(20):
            draw = sampler.take(4)
            assert len(set(draw)) == 4, (seed, draw)


def test_an_empty_or_too_small_prompt_set_fails_at_once():
    """Regression: an empty D_rm(tau) made take() loop forever."""
    with pytest.raises(ValueError, match="empty"):
        PromptSampler(0, seed=0)
    with pytest.raises(ValueError, match="cannot draw 5 distinct prompts from 3"):
        PromptSampler(3, seed=0).take(5)


def test_solved_rows_are_passed_over_and_kept_in_the_saved_position():
    sampler = PromptSampler(10, seed=2)
    sampler.mark_solved([1, 2, 3])
    drawn = sampler.take(7) + sampler.take(7)  # two epochs of the 7 unsolved rows
    assert sorted(drawn) == sorted([0, 4, 5, 6, 7, 8, 9] * 2)
    state = sampler.state()
    assert state["solved"] == [1, 2, 3]
    assert PromptSampler(10, seed=2, **state).take(5) == sampler.take(5)
    sampler.mark_solved([0, 4, 5, 6, 7])  # 2 unsolved left: a draw of 3 takes solved rows too
    assert len(set(sampler.take(3))) == 3 and set(sampler.take(2)) == {8, 9}
