"""The statistics behind the stage table, against values worked out by hand."""

import pytest

from r1v_ray.data.synthetic import TASKS, make_row
from r1v_ray.eval.stats import (
    answer_space,
    binned_means,
    chance_level,
    majority_baseline,
    paired_bootstrap,
    paired_rows,
    pass1_over_runs,
    pearson,
    slope,
)


def test_pass1_over_runs_is_the_mean_and_sample_std_of_per_run_accuracies():
    # runs: column 1 = 1/2 right, column 2 = 2/2, column 3 = 0/2 -> 50, 100, 0; mean 50, sample std 50
    out = pass1_over_runs([[1, 1, 0], [0, 1, 0]])
    assert out["runs"] == [50.0, 100.0, 0.0] and out["n"] == 2
    assert out["mean"] == pytest.approx(50.0) and out["std"] == pytest.approx(50.0)
    assert pass1_over_runs([[1], [0], [0], [0]]) == {"mean": 25.0, "std": 0.0, "runs": [25.0], "n": 4}
    with pytest.raises(ValueError, match="rows x runs"):
        pass1_over_runs([])


def test_paired_bootstrap_two_rows():
    # d = (0, 1): a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so its 2.5% and
    # 97.5% quantiles are 0 and 1: the difference is 50 points with the CI [0, 100]
    ci = paired_bootstrap([0, 0], [0, 1])
    assert (ci["diff"], ci["lo"], ci["hi"]) == (50.0, 0.0, 100.0)
    assert ci["n"] == 2 and ci["samples"] == 10_000 and ci["seed"] == 0 and ci["level"] == 0.95


def test_paired_bootstrap_pairs_rows():
    # Every row gains exactly one run of two (0.5 -> 1.0): paired, every resample differs by 50 points
    # although each stage alone spreads over 50 points from row to row.
    prev, cur = [0.5, 0.0, 0.5, 0.0] * 5, [1.0, 0.5, 1.0, 0.5] * 5
    ci = paired_bootstrap(prev, cur)
    assert ci["diff"] == pytest.approx(50.0) and ci["lo"] == pytest.approx(50.0) and ci["hi"] == pytest.approx(50.0)


def test_paired_bootstrap_ci_from_the_binomial():
    # 4 of 20 rows go 0 -> 1, the rest stay: a resample's gain is X/20 with X ~ Binomial(20, 0.2);
    # P(X <= 0) = 0.012 < 0.025 < P(X <= 1) = 0.069 and P(X <= 7) = 0.968 < 0.975 < P(X <= 8) = 0.990,
    # so the 95% CI is [1/20, 8/20] = [5, 40] points around the 20-point gain
    prev = [0, 1] * 10
    cur = [1 if i in (0, 2, 4, 6) else v for i, v in enumerate(prev)]
    ci = paired_bootstrap(prev, cur)
    assert (ci["diff"], ci["lo"], ci["hi"]) == (pytest.approx(20.0), pytest.approx(5.0), pytest.approx(40.0))
    assert paired_bootstrap(prev, cur, seed=3) == {**ci, "seed": 3}  # the same quantiles from another stream
    assert paired_bootstrap(prev, cur) == ci  # seeded: the same numbers every time
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([], [])


def test_paired_rows_pairs_by_id_and_averages_runs():
    prev = {"b": [1, 1], "a": [0, 1]}
    cur = {"a": [1, 1], "b": [0, 0]}
    assert paired_rows(prev, cur) == ([0.5, 1.0], [1.0, 0.0])  # in current's order, by id, not by position
    with pytest.raises(ValueError, match=r"1 only in the previous stage \['b'\], 1 only in this one \['c'\]"):
        paired_rows(prev, {"a": [1], "c": [0]})


def test_chance_levels_of_the_synthetic_tasks():
    assert chance_level("shape_kind") == pytest.approx(100 / 3) and chance_level("tallest_bar") == pytest.approx(25)
    assert chance_level("count_color") == pytest.approx(100 / 7)  # 0..6 shapes of the colour
    assert chance_level("sum_digits") == pytest.approx(100 / 17)  # 2..18
    assert chance_level("missing_angle") == pytest.approx(25)  # 60, 90, 108, 120
    assert chance_level("mathvista") is None and answer_space("mathvista") is None
    assert majority_baseline(["1", "1", "2"]) == pytest.approx(200 / 3) and majority_baseline([]) is None


def test_every_generated_answer_lies_in_its_answer_space():
    for task in TASKS:
        space = set(answer_space(task))
        for i in range(150):
            row = make_row(7, "test", i, image_size=16, tasks=[task])
            assert row["answer"] in space, (task, row["answer"])
            if row["choices"]:
                assert len(row["choices"]) == len(space)


def test_pearson_slope_and_bins():
    # x = 1, 2, 3; y = 2, 4, 7: Sxy = 5, Sxx = 2, Syy = 114/9 -> r = 5 / sqrt(2 * 114 / 9), slope 5/2
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / (2 * 114 / 9) ** 0.5)
    assert slope([1, 2, 3], [2, 4, 7]) == pytest.approx(2.5)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and slope([2, 2], [1, 5]) is None and pearson([1], [1]) is None
    bins = binned_means([5, 1, 4, 2, 3, 6], [50, 10, 40, 20, 30, 60], bins=3)
    assert bins == [
        {"x_min": 1.0, "x_max": 2.0, "n": 2, "y_mean": 15.0},
        {"x_min": 3.0, "x_max": 4.0, "n": 2, "y_mean": 35.0},
        {"x_min": 5.0, "x_max": 6.0, "n": 2, "y_mean": 55.0},
    ]
    assert [b["n"] for b in binned_means(range(7), range(7), bins=3)] == [3, 2, 2]
