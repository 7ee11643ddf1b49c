"""Pass@1 over k independent sampled runs (paper section 3), with per-category and per-source breakdowns.

Pure functions: rows carry `completions` (run i = completion i), `answer`,
`choices`, `category`, `source`; no Ray here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from r1v_ray.engines.rollout.types import GenerationRequest, Sampling
from r1v_ray.rewards import accuracy_reward, build_question_text


def _choices(row: dict) -> list[str] | None:
    """Options of a row as a list (Arrow/NumPy give arrays), or None for open questions."""
    value = row.get("choices")
    return list(value) if value is not None and len(value) else None


def eval_request(
    row: dict, runs: int, max_tokens: int, temperature: float, top_p: float, seed: int
) -> GenerationRequest:
    """The benchmark prompt: image, question, options, and the paper's prompt for its kind."""
    text = build_question_text(row["question"], _choices(row))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    # One request with n = k gives the k independent runs; the seed makes them reproducible.
    sampling = Sampling(n=runs, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    return GenerationRequest(messages=messages, images=[row["image"]], sampling=sampling, request_id=str(row["id"]))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def score_rows(rows: list[dict], runs: int) -> dict:
    """Pass@1 per run, mean ± std over runs, and the same per category and per source."""
    per_run = [[] for _ in range(runs)]
    groups: dict[str, dict[str, list[list[float]]]] = {
        "category": defaultdict(lambda: [[] for _ in range(runs)]),
        "source": defaultdict(lambda: [[] for _ in range(runs)]),
    }
    for row in rows:
        choices = _choices(row)
        completions = list(row["completions"])
        if len(completions) != runs:
            raise ValueError(f"row {row['id']}: {len(completions)} completions for {runs} runs")
        for k, text in enumerate(completions):
            score = accuracy_reward(text, row["answer"], choices)
            per_run[k].append(score)
            for key in groups:
                groups[key][str(row.get(key) or "unknown")][k].append(score)

    def summary(run_lists: list[list[float]]) -> dict:
        accs = [100.0 * statistics.fmean(r) if r else 0.0 for r in run_lists]
        mean, std = _mean_std(accs)
        return {
            "pass@1_mean": round(mean, 3),
            "pass@1_std": round(std, 3),
            "runs": [round(a, 3) for a in accs],
            "n": len(run_lists[0]) if run_lists else 0,
        }

    return {
        "overall": summary(per_run),
        "by_category": {name: summary(lists) for name, lists in sorted(groups["category"].items())},
        "by_source": {name: summary(lists) for name, lists in sorted(groups["source"].items())},
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
        lines += [f"| {key.split('_')[1]} | n | Pass@1 mean | std |", "|---|---:|---:|---:|"]
        for name, s in report[key].items():
            lines.append(f"| {name} | {s['n']} | {s['pass@1_mean']:.2f} | {s['pass@1_std']:.2f} |")
        lines.append("")
    if report.get("rejected"):
        lines.append(f"Rejected rows (not scored): {report['rejected']}")
    return "\n".join(lines)
