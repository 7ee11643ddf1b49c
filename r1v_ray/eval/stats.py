"""Statistics for comparing stages honestly: Pass@1 over k runs, paired bootstrap CIs, chance levels, trends.

Pure functions over lists and arrays (no Ray, no files). Pass@1 values are in percentage points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from r1v_ray.data.synthetic import COLORS, POLYGONS, SHAPES

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
_CHUNK = 1_000  # resamples drawn at a time: memory stays at _CHUNK x rows indices

# The answer space of each synthetic task, read off its generator in r1v_ray/data/synthetic.py:
ANSWER_SPACES: dict[str, tuple] = {
    "shape_kind": ("choice", len(SHAPES)),  # the options are all of SHAPES
    "tallest_bar": ("choice", len(COLORS)),  # the options are every colour; 3 of them are drawn
    "count_color": ("integer", 0, 6),  # randint(2, 6) shapes; the target colour may appear 0..6 times
    "sum_digits": ("integer", 2, 18),  # 2 digits, each randint(1, 9)
    "missing_angle": ("values", *(180 * (s - 2) // s for s in POLYGONS)),  # a regular polygon's angle
}


def pass1_over_runs(correct: Sequence[Sequence[float]]) -> dict:
    """Pass@1 per run, and its mean ± sample std over runs, from a rows x runs matrix of 0/1 scores."""
    m = np.asarray(correct, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"need a rows x runs matrix with at least one of each, got shape {m.shape}")
    per_run = 100.0 * m.mean(axis=0)
    std = float(per_run.std(ddof=1)) if len(per_run) > 1 else 0.0
    return {"mean": float(per_run.mean()), "std": std, "runs": per_run.tolist(), "n": int(m.shape[0])}


def paired_rows(previous: dict[str, Sequence[float]], current: dict[str, Sequence[float]]) -> tuple[list, list]:
    """Each row's score averaged over its runs, for two stages, paired by row id (the order of `current`).

    The two stages must have been evaluated on the same rows; otherwise the error names the rows that differ.
    """
    only_prev, only_cur = sorted(set(previous) - set(current)), sorted(set(current) - set(previous))
    if only_prev or only_cur:
        raise ValueError(
            f"not evaluated on the same rows: {len(only_prev)} only in the previous stage {only_prev[:3]}, "
            f"{len(only_cur)} only in this one {only_cur[:3]}"
        )
    ids = list(current)
    return [float(np.mean(previous[i])) for i in ids], [float(np.mean(current[i])) for i in ids]


def paired_bootstrap(
    previous: Sequence[float],
    current: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> dict:
    """The difference current - previous in mean score (points) with a paired bootstrap percentile CI.

    `previous[i]` and `current[i]` are row i's scores (each averaged over its runs) under the two stages.
    Rows are resampled with replacement, the same rows for both stages (paired), `samples` times.
    """
    d = np.asarray(current, dtype=np.float64) - np.asarray(previous, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"need two equally long, non-empty score lists, got {len(previous)} and {len(current)}")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"samples={samples} must be >= 1 and level={level} in (0, 1)")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, _CHUNK):
        idx = rng.integers(0, len(d), size=(min(_CHUNK, samples - start), len(d)))
        means.append(d[idx].mean(axis=1))
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return {
        "diff": 100.0 * float(d.mean()),
        "lo": 100.0 * float(lo),
        "hi": 100.0 * float(hi),
        "n": len(d),
        "samples": samples,
        "seed": seed,
        "level": level,
    }


def answer_space(task: str) -> list[str] | None:
    """Every answer the synthetic task can have (option letters for multiple choice), or None if unknown."""
    space = ANSWER_SPACES.get(task)
    if space is None:
        return None
    if space[0] == "choice":
        return [chr(ord("A") + i) for i in range(space[1])]
    if space[0] == "values":
        return [str(v) for v in space[1:]]
    return [str(v) for v in range(space[1], space[2] + 1)]


def chance_level(task: str) -> float | None:
    """Pass@1 (%) of a uniform guess over the task's answer space; None for a task not in the synthetic set."""
    space = answer_space(task)
    return None if space is None else 100.0 / len(space)


def majority_baseline(answers: Sequence[str]) -> float | None:
    """Pass@1 (%) of always giving the most common gold answer: what the answer prior alone scores."""
    if not answers:
        return None
    return 100.0 * Counter(map(str, answers)).most_common(1)[0][1] / len(answers)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than two points or a constant series (no correlation defined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"x has {len(a)} values, y has {len(b)}")
    if len(a) < 2 or a.std() <= 1e-12 or b.std() <= 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def slope(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Least-squares slope of y on x; None with fewer than two distinct x."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or a.std() <= 1e-12:
        return None
    return float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum())


def binned_means(x: Sequence[float], y: Sequence[float], bins: int = 5) -> list[dict]:
    """Points sorted by x and cut into `bins` groups of (nearly) equal count: each group's x range and mean y."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y has {len(y)}")
    order = np.argsort(np.asarray(x, dtype=np.float64), kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    out = []
    for part in np.array_split(np.arange(len(xs)), min(bins, len(xs))):
        out.append(
            {
                "x_min": float(xs[part[0]]),
                "x_max": float(xs[part[-1]]),
                "n": len(part),
                "y_mean": float(ys[part].mean()),
            }
        )
    return out
