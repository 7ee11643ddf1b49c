"""The run report's statistics: the stage table with error bars and paired CIs, chance levels per task, the
DRLC penalty against chain length, RM score histograms with |D_rm(tau)|, |D_rm(tau_t)| and |E_t| per
iteration, GRPO's response length over its steps.

Reads only files of a run directory (manifests, eval folders, Parquet columns, metrics JSONL); no Ray.
Where each file lives is said once, in `Layout`.
"""

from __future__ import annotations

import re

from r1v_ray import store
from r1v_ray.data.io import dataset_schema, read_parquet
from r1v_ray.eval.stats import binned_means, chance_level, majority_baseline, pearson, slope
from r1v_ray.eval.table import EVAL_JSON, read_per_row, stage_entry
from r1v_ray.metrics import read_jsonl
from r1v_ray.run_dir import DONE, RunLayout

RM_SCORES = range(6)  # the RM's 0..5 scale (paper 2.2)
NAMES = {"reassembled": "re-assembled", "M0": "stage 1 (M0)"}


class Layout:
    """What these sections read from a run directory (local or a URI), named by `RunLayout`."""

    def __init__(self, run_dir: str):
        self.run_dir, self.paths = run_dir, RunLayout(run_dir)

    def manifest(self, stage: str) -> dict:
        return store.read_json(self.paths.manifest(stage), default={})

    def sft_eval(self, model: str) -> str:
        return self.paths.stage("sft", "eval", model)

    def grpo_eval(self) -> str:
        return self.paths.stage("grpo", "eval")

    def mlp_init_eval(self) -> str:
        return self.paths.stage("mlp_init", "eval")

    def redistills(self) -> list[tuple[str, str]]:
        """(model name M_t, its redistill folder) for each finished re-distillation, in order of t."""
        sft = self.paths.stage("sft")
        ts = sorted(int(n[1:]) for n in (store.listdir(sft) if store.is_dir(sft) else []) if re.fullmatch(r"M\d+", n))
        done = [(t, self.paths.redistill_done(t)) for t in ts]
        return [(f"M{t}", store.dirname(path)) for t, path in done if store.is_file(path)]

    def grpo_metrics(self) -> str:
        return self.paths.metrics("grpo")


def _entries(lay: Layout) -> list[tuple[str, dict, str]]:
    """(model, its entry in a manifest, its eval folder): the MLP-init model (the score re-assembly is
    compared against), every SFT table entry, then GRPO."""
    out = []
    m = lay.manifest("mlp_init").get("metrics", {})
    if m.get("eval_pass1") is not None:
        out.append(("MLP-init", {"model": "MLP-init", "pass@1": m["eval_pass1"]}, lay.mlp_init_eval()))
    out += [
        (str(e["model"]), e, lay.sft_eval(str(e["model"])))
        for e in lay.manifest("sft").get("metrics", {}).get("table", [])
    ]
    g = lay.manifest("grpo").get("metrics", {})
    if g.get("eval_pass1") is not None or g.get("eval"):
        out.append(("GRPO", g.get("eval") or {"model": "GRPO", "pass@1": g.get("eval_pass1")}, lay.grpo_eval()))
    return out


def stage_stats(run_dir: str) -> list[dict]:
    """Each evaluated model's table entry, recomputed from its eval folder when there (else the manifest's)."""
    rows, previous = [], None
    for model, recorded, eval_dir in _entries(Layout(run_dir)):
        if store.is_file(store.join(eval_dir, EVAL_JSON)):
            entry = stage_entry(model, eval_dir, previous)
        else:  # an older or moved run: what the manifest recorded
            entry = {"pass@1_std": None, "runs": None, "n": None, "vs_previous": None, **recorded, "eval_dir": None}
        rows.append(entry)
        previous = entry
    return rows


def _ci_text(vs: dict | None) -> str:
    if not vs:
        return ""
    if "unavailable" in vs:
        return f"n/a vs {vs['model']}"
    return f"{vs['diff']:+.2f} [{vs['lo']:+.2f}, {vs['hi']:+.2f}] vs {NAMES.get(vs['model'], vs['model'])}"


def stage_notes(run_dir: str, rows: list[dict]) -> list[str]:
    """Per table row: "data re-distilled by M_{t-1}" for an M_t trained on re-distilled data; GRPO's held-out
    reward curve (first -> last, a reward, not Pass@1)."""
    lay = Layout(run_dir)
    redistilled = {model for model, _ in lay.redistills()}
    held = lay.manifest("grpo").get("metrics", {}).get("heldout") or []
    notes = []
    for r in rows:
        model, note = str(r["model"]), ""
        if model in redistilled:
            note = f"data re-distilled by M{int(model[1:]) - 1}"
        elif model == "GRPO" and len(held) > 1:
            note = (
                f"held-out reward {held[0]['heldout_reward']:.3f} -> {held[-1]['heldout_reward']:.3f} over "
                f"{held[-1]['step']} steps (reward, not Pass@1)"
            )
        notes.append(note)
    return notes


def format_stats_table(run_dir: str) -> str:
    """Stage, Pass@1 mean ± std over runs, runs, rows, notes (when any), difference to the stage before with
    its 95% CI."""
    rows = stage_stats(run_dir)
    if not rows:
        return "(no SFT or GRPO stage has finished in this run directory)"
    notes = stage_notes(run_dir, rows)
    width = max(len("notes"), *map(len, notes)) if any(notes) else 0
    column = (lambda text: f"   {text:<{width}}") if width else (lambda text: "")  # noqa: E731
    lines = [
        f"{'stage':<16}{'Pass@1 ± std':>18}{'runs':>6}{'rows':>6}{column('notes')}   "
        "difference to the previous stage [95% CI]"
    ]
    for r, note in zip(rows, notes):
        mean = "" if r["pass@1"] is None else f"{r['pass@1']:.2f}"
        value = f"{mean} ± {r['pass@1_std']:.2f}" if r.get("pass@1_std") is not None else mean
        runs = "" if r.get("runs") is None else str(len(r["runs"]))
        n = "" if r.get("n") is None else str(r["n"])
        name = NAMES.get(r["model"], r["model"])
        lines.append(f"{name:<16}{value:>18}{runs:>6}{n:>6}{column(note)}   {_ci_text(r.get('vs_previous'))}".rstrip())
    sizes = sorted({r["n"] for r in rows if r.get("n")})
    if sizes:  # the resolution of the table: what one row right or wrong moves Pass@1 by
        lines.append(f"(one test row = {100 / sizes[0]:.2f} points of Pass@1 at {sizes[0]} rows)")
    return "\n".join(lines)


def _by_category(eval_dir: str | None) -> dict:
    if not eval_dir or not store.is_file(store.join(eval_dir, EVAL_JSON)):
        return {}
    return store.read_json(store.join(eval_dir, EVAL_JSON)).get("by_category", {})


def format_chance_table(run_dir: str) -> str:
    """Per task: rows, chance (uniform guess over the answer space), the most common answer's share, and
    each stage's Pass@1 mean; the overall row weighs tasks by their rows."""
    stages = stage_stats(run_dir)
    per_row = next((p for s in stages if s.get("eval_dir") and (p := read_per_row(s["eval_dir"]))), None)
    if not per_row:
        return "(no per-row evaluation scores in this run directory)"
    tasks: dict[str, list[str]] = {}
    for r in per_row:
        tasks.setdefault(r["category"], []).append(r["answer"])
    cats = [_by_category(s.get("eval_dir")) for s in stages]
    names = [NAMES.get(s["model"], s["model"]) for s in stages]
    lines = [
        "| task | rows | chance | most common answer | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]

    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    weighted = {"chance": 0.0, "majority": 0.0, "known": 0}
    for task, answers in sorted(tasks.items()):
        chance, majority = chance_level(task), majority_baseline(answers)
        if chance is not None:
            weighted["chance"] += chance * len(answers)
            weighted["known"] += len(answers)
        weighted["majority"] += majority * len(answers)
        scores = [fmt(c.get(task, {}).get("pass@1_mean")) for c in cats]
        lines.append(f"| {task} | {len(answers)} | {fmt(chance)} | {fmt(majority)} | " + " | ".join(scores) + " |")
    n = len(per_row)
    overall = fmt(weighted["chance"] / n) if weighted["known"] == n else "n/a"
    lines.append(
        f"| all | {n} | {overall} | {fmt(weighted['majority'] / n)} | "
        + " | ".join(fmt(s["pass@1"]) for s in stages)
        + " |"
    )
    return "\n".join(lines)


def _penalty_block(title: str, data_uri: str, bins: int = 5) -> list[str]:
    if not store.exists(data_uri):
        return []
    names = dataset_schema(data_uri).names
    if "rep_penalty" not in names or "generated_tokens" not in names:
        return [f"{title}: (no rep_penalty / generated_tokens columns in {data_uri})", ""]
    t = read_parquet(data_uri, columns=["rep_penalty", "generated_tokens"])
    x, y = t.column("rep_penalty").to_pylist(), t.column("generated_tokens").to_pylist()
    r = pearson(x, y)
    summary = f"{title}: {len(x)} rows, Pearson r(penalty, generated tokens) = {'n/a' if r is None else f'{r:+.3f}'}"
    rows = [f"| {b['x_min']:.3f} – {b['x_max']:.3f} | {b['n']} | {b['y_mean']:.1f} |" for b in binned_means(x, y, bins)]
    return _binned_table(summary, ["penalty", "rows", "mean generated tokens"], rows)


def _binned_table(summary: str, columns: list[str], rows: list[str]) -> list[str]:
    """A summary line, then a Markdown table of binned means (the first column the bin, the others numbers)."""
    header = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    return [summary, "", *header, *rows, ""]


def penalty_length_lines(run_dir: str) -> list[str]:
    """DRLC: each distillation's penalty against the length it generated (a higher penalty should shorten)."""
    lay = Layout(run_dir)
    lines = _penalty_block("Distillation", lay.paths.data("distill"))
    for model, folder in lay.redistills():
        lines += _penalty_block(f"Re-distillation before {model}", store.join(folder, "distill", "data"))
    return lines or ["(no distilled data in this run)", ""]


def histogram_lines(hist: dict) -> list[str]:
    """An RM histogram as a table with each score's share and |D_rm(tau)| for tau = that score."""
    counts = {int(k): int(v) for k, v in hist.items()}
    total = sum(counts.values())
    widest = max(counts.values(), default=0)
    lines = ["| RM score | rows | share | \\|D_rm(tau = score)\\| | |", "|---:|---:|---:|---:|---|"]
    for k in sorted(counts):
        at_least = sum(v for s, v in counts.items() if s >= k)
        bar = "#" * round(20 * counts[k] / widest) if widest else ""
        lines.append(f"| {k} | {counts[k]} | {100 * counts[k] / total if total else 0:.1f}% | {at_least} | {bar} |")
    return lines + [f"| total | {total} | | | |", ""]


def rm_lines(run_dir: str) -> list[str]:
    """The score stage's histogram and each re-score's before an iteration."""
    lay = Layout(run_dir)
    hist = lay.manifest("score").get("metrics", {}).get("histogram")
    lines = histogram_lines(hist) if hist else ["(no score stage in this run)", ""]
    for model, folder in lay.redistills():
        h = (store.read_json(store.join(folder, DONE)).get("score") or {}).get("histogram")
        if h:
            lines += [f"Re-scored before {model}:", ""] + histogram_lines(h)
    return lines


def iteration_lines(run_dir: str) -> list[str]:
    """|D_rm(tau_t)| and |E_{t-1}| (M_{t-1}'s greedy errors on the training rows) for each iteration t."""
    its = Layout(run_dir).manifest("sft").get("metrics", {}).get("iterations", [])
    if not its:
        return ["(no SFT iteration in this run)", ""]
    lines = [
        "| t | tau_t | \\|D_rm(tau_t)\\| | \\|E_{t-1}\\| | M_{t-1} train accuracy | rows trained |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for it in its:
        e = it.get("error_set") or {}
        acc = e.get("train_accuracy")
        lines.append(
            f"| {it['t']} | {it.get('tau')} | {it.get('d_rm_rows', 'n/a')} | {e.get('wrong', 'n/a')} | "
            f"{'n/a' if acc is None else f'{acc:.3f}'} | {it.get('rows', 'n/a')} |"
        )
    return lines + [""]


def response_lengths(run_dir: str, key: str = "response_length") -> tuple[list[int], list[float]]:
    """(steps, mean response length) of GRPO's training batches, or with key="heldout_response_length" of its
    held-out passes (the same prompts and seeds each time, step 0 included)."""
    records = [r for r in read_jsonl(Layout(run_dir).grpo_metrics()) if r.get(key) is not None]
    return [r["step"] for r in records], [r[key] for r in records]


def _trend(steps: list[int], lengths: list[float], what: str) -> str:
    r, b = pearson(steps, lengths), slope(steps, lengths)
    return (
        f"{what}: {len(steps)} points; Pearson r(step, response length) = {'n/a' if r is None else f'{r:+.3f}'}, "
        f"slope {'n/a' if b is None else f'{b:+.4f}'} tokens per step"
    )


def response_length_lines(run_dir: str, bins: int = 5) -> list[str]:
    """GRPO's mean response length over its steps: the training batches binned (the paper's figure; a step's 8
    prompts move it by which tasks they drew), then the held-out passes on fixed prompts; Pearson r, slope."""
    steps, lengths = response_lengths(run_dir)
    if not steps:
        return ["(no GRPO steps in this run)", ""]
    rows = [
        f"| {int(v['x_min'])} – {int(v['x_max'])} | {v['y_mean']:.1f} |" for v in binned_means(steps, lengths, bins)
    ]
    lines = _binned_table(_trend(steps, lengths, "Training batches"), ["steps", "mean response length (tokens)"], rows)
    held_steps, held = response_lengths(run_dir, "heldout_response_length")
    if held_steps:
        lines += [
            _trend(held_steps, held, "Held-out prompts (the same prompts and seeds at each point)"),
            "",
            "| step | mean response length (tokens) |",
            "|---:|---:|",
            *[f"| {s} | {v:.2f} |" for s, v in zip(held_steps, held)],
            "",
        ]
    return lines


def stats_markdown(run_dir: str) -> list[str]:
    """The report's statistics sections, as Markdown lines."""
    return [
        "## Score per stage (the shape of the paper's Table 2)",
        "",
        "Pass@1 in %: mean ± sample std over the evaluation runs; the difference to the stage above, paired by "
        "test row (rows resampled 10,000 times, seed 0, scores averaged over runs), with its 95% percentile CI.",
        "",
        "```",
        format_stats_table(run_dir),
        "```",
        "",
        "Per task, with chance (a uniform guess over the task's answer space) and the share of the most common "
        "answer (what the answer prior alone scores):",
        "",
        format_chance_table(run_dir),
        "",
        "## DRLC penalty against chain length",
        "",
        *penalty_length_lines(run_dir),
        "## RM scores",
        "",
        *rm_lines(run_dir),
        "## Iterative SFT data",
        "",
        *iteration_lines(run_dir),
        "## GRPO response length",
        "",
        *response_length_lines(run_dir),
    ]


def plot_stage_stats(run_dir: str, path: str) -> bool:
    """Pass@1 per stage as bars with ± std error bars."""
    rows = [r for r in stage_stats(run_dir) if r["pass@1"] is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4))
    errs = [r.get("pass@1_std") or 0.0 for r in rows]
    bars = ax.bar([NAMES.get(r["model"], r["model"]) for r in rows], [r["pass@1"] for r in rows], yerr=errs, capsize=4)
    ax.bar_label(bars, fmt="%.1f", padding=3)
    ax.set_ylim(0, max(r["pass@1"] + e for r, e in zip(rows, errs)) * 1.15 + 1)
    ax.set(title="Pass@1 on the test split per stage (± std over runs)", ylabel="Pass@1 (%)")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
