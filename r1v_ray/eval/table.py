"""Entries of the stage table: a model's Pass@1 mean ± std over runs and its paired bootstrap CI against the
model evaluated before it, read from evaluation folders (`eval.json` and `per_row.jsonl`, both from `run_eval`).

An entry keeps the keys `model` and `pass@1` that readers of the table always had; what it adds:
`pass@1_std`, `runs` (Pass@1 of each run), `n`, `eval_dir`, and `vs_previous` (the difference to the
previous entry with its CI, or the reason there is none).
"""

from __future__ import annotations

import json
import os

from r1v_ray.data.io import exists, read_text
from r1v_ray.eval.stats import paired_bootstrap, paired_rows

PER_ROW = "per_row.jsonl"
EVAL_JSON = "eval.json"


def per_row_text(per_row: list[dict]) -> str:
    """One JSON object a line: {"id", "category", "answer", "correct": [score of run 1, ..., run k]}."""
    return "".join(json.dumps(r) + "\n" for r in per_row)


def read_per_row(eval_dir: str) -> list[dict] | None:
    """The per-row scores of an evaluation; None for an evaluation written before they were kept."""
    path = os.path.join(eval_dir, PER_ROW)
    if not exists(path):
        return None
    return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


def load_eval(eval_dir: str) -> dict:
    """`eval.json` with `per_row` added (None if absent): what `run_eval` returned when it wrote them."""
    report = json.loads(read_text(os.path.join(eval_dir, EVAL_JSON)))
    report["per_row"] = read_per_row(eval_dir)
    return report


def compare(previous: dict, entry: dict) -> dict:
    """`entry`'s Pass@1 minus `previous`'s, paired by row, with the 95% bootstrap CI (or why there is none)."""
    out = {"model": previous["model"]}
    rows = [read_per_row(e["eval_dir"]) if e.get("eval_dir") else None for e in (previous, entry)]
    if rows[0] is None or rows[1] is None:
        return {**out, "unavailable": "no per-row scores (per_row.jsonl) in one of the two evaluations"}
    try:
        prev, cur = paired_rows(*({r["id"]: r["correct"] for r in side} for side in rows))
    except ValueError as err:
        return {**out, "unavailable": str(err)}
    if not cur:
        return {**out, "unavailable": "no rows"}
    ci = paired_bootstrap(prev, cur)
    return {**out, **{k: round(v, 3) if isinstance(v, float) and k != "level" else v for k, v in ci.items()}}


def stage_entry(name: str, eval_dir: str, previous: dict | None = None) -> dict:
    """The table entry of model `name` evaluated in `eval_dir`; with `previous` (the entry before it), the CI."""
    o = json.loads(read_text(os.path.join(eval_dir, EVAL_JSON)))["overall"]
    entry = {
        "model": name,
        "pass@1": o["pass@1_mean"],
        "pass@1_std": o["pass@1_std"],
        "runs": o["runs"],
        "n": o["n"],
        "eval_dir": eval_dir,
        "vs_previous": None,
    }
    if previous is not None:
        entry["vs_previous"] = compare(previous, entry)
    return entry
