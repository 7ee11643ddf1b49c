"""A run directory as plots and a Markdown summary: GRPO curves, SFT loss, the score per stage.

    python jobs/report.py --config configs/demo/tiny.yaml      # writes RUN_DIR/report/
    python jobs/report.py --run-dir runs/demo

Reads only files (manifests, metrics JSONL): no Ray. A stage that is missing or has no
data is skipped, and report.md says so.
"""

from __future__ import annotations

import os
import re

from r1v_ray import store
from r1v_ray.metrics import read_jsonl
from r1v_ray.report_stats import plot_stage_stats, stats_markdown
from r1v_ray.run_dir import RunLayout
from r1v_ray.stages import STAGES


def manifests(run_dir: str) -> dict[str, dict]:
    out = {}
    layout = RunLayout(run_dir)
    for stage in STAGES:
        manifest = store.read_json(layout.manifest(stage), None)
        if manifest is not None:
            out[stage] = manifest
    return out


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_grpo(run_dir: str, path: str) -> bool:
    records = read_jsonl(RunLayout(run_dir).metrics("grpo"))
    steps = [r for r in records if "reward_mean" in r]
    if not steps:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(*_series(steps, "reward_mean"), label="train reward (batch mean)", alpha=0.7)
    hx, hy = _series(records, "heldout_reward")
    if hx:
        axes[0].plot(hx, hy, "o-", label="held-out reward", color="tab:orange")
    axes[0].set(title="Reward", xlabel="GRPO step", ylabel="reward")
    axes[0].legend(fontsize=8)
    axes[1].plot(*_series(steps, "response_length"), label="train batch", color="tab:green", alpha=0.7)
    lx, ly = _series(records, "heldout_response_length")
    if lx:
        axes[1].plot(lx, ly, "o-", label="held-out prompts", color="tab:olive")
        axes[1].legend(fontsize=8)
    axes[1].set(title="Response length", xlabel="GRPO step", ylabel="tokens (mean)")
    axes[2].plot(*_series(steps, "accuracy"), label="train accuracy", color="tab:red")
    axes[2].plot(*_series(steps, "format_rate"), label="train format rate", color="tab:purple", alpha=0.6)
    ax_, ay_ = _series(records, "heldout_accuracy")
    if ax_:
        axes[2].plot(ax_, ay_, "s--", label="held-out accuracy", color="tab:brown")
    axes[2].set(title="Accuracy and format", xlabel="GRPO step", ylabel="fraction", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def sft_runs(run_dir: str) -> list[tuple[str, list[dict]]]:
    """Every SFT-style metrics.jsonl under the run (records with loss and lr), in the order they trained."""
    series = []
    layout = RunLayout(run_dir)
    for file in layout.all_metrics():
        records = [r for r in read_jsonl(file) if "loss" in r and "lr" in r and "step" in r]
        if records:
            series.append((store.dirname(file)[len(layout.root) :].strip("/"), records))
    return sorted(series, key=lambda item: (item[1][0].get("time", 0), item[0]))


def plot_sft_loss(run_dir: str, path: str) -> bool:
    series = sft_runs(run_dir)
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    offset = 0  # runs follow each other: one x axis of optimizer steps across the whole run
    for name, records in series:
        ax.plot([offset + r["step"] for r in records], [r["loss"] for r in records], ".-", label=name, markersize=3)
        offset += max(r["step"] for r in records)
    ax.set(
        title="SFT loss (assistant tokens), runs in training order",
        xlabel="optimizer step (cumulative over runs)",
        ylabel="loss",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _distill_lines(d: dict) -> list[str]:
    p = d.get("penalty") or {}
    pen = (
        f"min {_fmt(p.get('min'))}, mean {_fmt(p.get('mean'))}, max {_fmt(p.get('max'))}"
        if isinstance(p, dict)
        else _fmt(p)
    )
    cost = d.get("judge_cost_usd", d.get("cost_usd"))
    return [
        f"- rows out {_fmt(d.get('rows_out'), 'd')}, rejected {_fmt(d.get('rejected'), 'd')}, "
        f"revised {_fmt(d.get('revised'), 'd')}, model's own accuracy {_fmt(d.get('self_accuracy'))}",
        f"- penalty {pen}; penalty/length correlation {_fmt(d.get('penalty_length_correlation'))}",
        f"- judge calls {_fmt(d.get('judge_calls'), 'd')}, cache hits {_fmt(d.get('judge_cache_hits'), 'd')}, "
        f"retries {_fmt(d.get('judge_retries'), 'd')}, cost {'n/a' if cost is None else f'${cost:.4f}'}",
    ]


def _grpo_lines(run_dir: str, g: dict) -> list[str]:
    held = [r for r in read_jsonl(RunLayout(run_dir).metrics("grpo")) if "heldout_reward" in r]
    held = held or g.get("heldout") or []  # the JSONL has held-out accuracy too; the manifest may not
    lines = []
    if held:
        first, last = held[0], held[-1]
        lines.append(
            f"- held-out reward: {_fmt(first['heldout_reward'])} at step {first['step']} -> "
            f"{_fmt(last['heldout_reward'])} at step {last['step']} (mean reward, not Pass@1)"
        )
        if first.get("heldout_accuracy") is not None:
            lines.append(
                f"- held-out accuracy: {_fmt(first['heldout_accuracy'])} at step {first['step']} -> "
                f"{_fmt(last.get('heldout_accuracy'))} at step {last['step']}"
            )
    if g.get("eval_pass1") is not None:
        lines.append(f"- Pass@1 of the final model on the test split: {g['eval_pass1']:.2f}%")
    return lines or ["(no held-out reward or evaluation recorded)"]


def _markdown(run_dir: str, plots: dict[str, bool]) -> str:
    m = manifests(run_dir)
    lines = [
        f"# Run report: {run_dir if store.is_remote(run_dir) else os.path.abspath(run_dir)}",
        "",
        "## Stages",
        "",
        "| stage | status | wall time (s) | attempts |",
        "|---|---|---:|---:|",
    ]
    for stage in STAGES:
        man = m.get(stage)
        lines.append(
            f"| {stage} | {man.get('status', '?')} | {_fmt(man.get('wall_s'), '.1f')} | {man.get('attempts', 'n/a')} |"
            if man
            else f"| {stage} | not run | | |"
        )
    lines += ["", *stats_markdown(run_dir)]  # stage table with error bars and CIs, chance, DRLC, RM, E_t, lengths
    lines += (
        ["## GRPO", ""]
        + (_grpo_lines(run_dir, m["grpo"].get("metrics", {})) if "grpo" in m else ["(no GRPO stage in this run)"])
        + [""]
    )
    d = m.get("distill", {}).get("metrics")
    lines += ["## Distillation", ""] + (_distill_lines(d) if d else ["(no distill stage in this run)"]) + [""]
    layout = RunLayout(run_dir)
    for name in (n for n in store.listdir(layout.stage("sft")) if re.fullmatch(r"M\d+", n)):
        done = layout.redistill_done(int(name[1:]))
        if not store.is_file(done):
            continue
        rd = store.read_json(done).get("distill") or {}
        lines += [f"Re-distillation before {name}:", ""]
        lines += _distill_lines(rd) + [""]
    titles = {"stages": "Pass@1 per stage", "sft_loss": "SFT loss", "grpo": "GRPO curves"}
    for name, ok in plots.items():
        lines += [f"## {titles[name]}", "", f"![{titles[name]}]({name}.png)" if ok else "(no data in this run)", ""]
    return "\n".join(lines)


def build_report(run_dir: str, out_dir: str | None = None) -> dict:
    """Write stages.png, sft_loss.png, grpo.png (when their data exist) and report.md; return the paths.
    A remote `out_dir` is written in a local folder first and uploaded."""
    out_dir = out_dir or RunLayout(run_dir).report()
    if store.is_remote(out_dir):
        with store.writing_dir(out_dir) as local:
            written = build_report(run_dir, local)
        rename = lambda p: store.join(out_dir, os.path.basename(p))  # noqa: E731
        return {**written, "markdown": rename(written["markdown"]), "plots": [rename(p) for p in written["plots"]]}
    os.makedirs(out_dir, exist_ok=True)
    makers = {"stages": plot_stage_stats, "sft_loss": plot_sft_loss, "grpo": plot_grpo}
    plots = {}
    for name, fn in makers.items():
        path = os.path.join(out_dir, f"{name}.png")
        plots[name] = fn(run_dir, path)
        if not plots[name] and os.path.exists(path):  # a stale plot from an earlier report would mislead
            os.remove(path)
    markdown = os.path.join(out_dir, "report.md")
    with open(markdown, "w") as f:
        f.write(_markdown(run_dir, plots))
    return {
        "markdown": markdown,
        "plots": [os.path.join(out_dir, f"{n}.png") for n, ok in plots.items() if ok],
        "skipped": [n for n, ok in plots.items() if not ok],
    }
