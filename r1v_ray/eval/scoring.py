"""Pass@1 over k independent sampled runs (paper section 3), with per-category and per-source breakdowns.

Pure functions: rows carry `completions` (run i = completion i), `answer`,
`choices`, `category`, `source`; no Ray here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from r1v_ray.eval.stats import chance_level
from r1v_ray.prompts import row_choices
from r1v_ray.rewards import accuracy_reward


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _row_scores(row: dict, runs: int) -> list[float]:
    """One score per run; a rejected row (its `error` set: no completions) is wrong in every run."""
    if row.get("error") is not None:
        return [0.0] * runs
    completions = list(row["completions"])
    if len(completions) != runs:
        raise ValueError(f"row {row['id']}: {len(completions)} completions for {runs} runs")
    choices = row_choices(row)
    return [accuracy_reward(text, row["answer"], choices) for text in completions]


def score_rows(rows: list[dict], runs: int) -> dict:
    """Pass@1 per run, mean ± std over runs, and the same per category and per source.

    Rows with an `error` (rejected before or during generation) stay in the denominator as wrong
    answers, so a failing engine cannot raise Pass@1; each summary says how many there were.
    `per_row` keeps each row's score in every run, for statistics across stages (paired by row id).
    """
    per_run = [[] for _ in range(runs)]
    per_row = []
    rejected: dict[tuple[str, str], int] = defaultdict(int)
    groups: dict[str, dict[str, list[list[float]]]] = {
        "category": defaultdict(lambda: [[] for _ in range(runs)]),
        "source": defaultdict(lambda: [[] for _ in range(runs)]),
    }
    for row in rows:
        bad = row.get("error") is not None
        rejected["overall", ""] += bad
        scores = _row_scores(row, runs)
        per_row.append(
            {
                "id": str(row["id"]),
                "category": str(row.get("category") or "unknown"),
                "answer": None if row.get("answer") is None else str(row["answer"]),
                "correct": scores,
            }
        )
        for k, score in enumerate(scores):
            per_run[k].append(score)
            for key in groups:
                groups[key][str(row.get(key) or "unknown")][k].append(score)
        for key in groups:
            rejected[key, str(row.get(key) or "unknown")] += bad

    def summary(run_lists: list[list[float]], n_rejected: int) -> dict:
        accs = [100.0 * statistics.fmean(r) if r else 0.0 for r in run_lists]
        mean, std = _mean_std(accs)
        return {
            "pass@1_mean": round(mean, 3),
            "pass@1_std": round(std, 3),
            "runs": [round(a, 3) for a in accs],
            "n": len(run_lists[0]) if run_lists else 0,
            "rejected": n_rejected,
        }

    return {
        "overall": summary(per_run, rejected["overall", ""]),
        **{
            f"by_{key}": {name: summary(lists, rejected[key, name]) for name, lists in sorted(groups[key].items())}
            for key in groups
        },
        "per_row": per_row,
    }


def markdown_table(report: dict, title: str) -> str:
    o = report["overall"]
    lines = [
        f"# {title}",
        "",
        f"Pass@1 over {len(o['runs'])} runs: **{o['pass@1_mean']:.2f} ± {o['pass@1_std']:.2f}** "
        f"(n = {o['n']}; runs: {', '.join(f'{r:.2f}' for r in o['runs'])})",
        "",
    ]
    for key in ("by_category", "by_source"):
        lines += [f"| {key.split('_')[1]} | n | Pass@1 mean | std | chance |", "|---|---:|---:|---:|---:|"]
        for name, s in report[key].items():
            chance = chance_level(name.removeprefix("synthetic/"))  # a uniform guess; blank off the synthetic set
            lines.append(
                f"| {name} | {s['n']} | {s['pass@1_mean']:.2f} | {s['pass@1_std']:.2f} | "
                f"{'' if chance is None else f'{chance:.2f}'} |"
            )
        lines.append("")
    if report["overall"].get("rejected"):
        lines.append(f"Rejected rows (no completion; counted as wrong in Pass@1): {report['overall']['rejected']}")
    return "\n".join(lines)
