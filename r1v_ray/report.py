"""A run directory as plots and a Markdown summary: GRPO curves, SFT loss, the score per stage.

    python jobs/report.py --config configs/demo/tiny.yaml      # writes RUN_DIR/report/
"""

from __future__ import annotations

import glob
import json
import os

from r1v_ray.metrics import read_jsonl

STAGES = ("distill", "score", "mlp_init", "reassemble", "sft", "grpo")


def manifests(run_dir: str) -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        path = os.path.join(run_dir, stage, "manifest.json")
        if os.path.exists(path):
            with open(path) as f:
                out[stage] = json.load(f)
    return out


def stage_rows(run_dir: str) -> list[dict]:
    """The paper's Table 2 shape: re-assembled, stage 1 (M0), M1..MT, GRPO, each with its Pass@1."""
    m = manifests(run_dir)
    rows = []
    names = {"reassembled": "re-assembled", "M0": "stage 1 (M0)"}
    for entry in m.get("sft", {}).get("metrics", {}).get("table", []):
        note = "data re-distilled by M%d" % (int(entry["model"][1:]) - 1) \
            if entry["model"] not in ("reassembled", "M0") and os.path.exists(
                os.path.join(run_dir, "sft", entry["model"], "redistill", "done.json")) else ""
        rows.append({"stage": names.get(entry["model"], entry["model"]), "pass1": entry["pass@1"], "note": note})
    g = m.get("grpo", {}).get("metrics", {})
    if g:
        held = g.get("heldout", [])
        note = f"held-out reward {held[0]['heldout_reward']:.3f} -> {held[-1]['heldout_reward']:.3f} over " \
               f"{held[-1]['step']} steps" if len(held) > 1 else ""
        rows.append({"stage": "GRPO", "pass1": g.get("eval_pass1"), "note": note})
    return rows


def format_stage_table(run_dir: str) -> str:
    rows = stage_rows(run_dir)
    if not rows:
        return "(no SFT or GRPO stage has finished in this run directory)"
    lines = [f"{'stage':<16}{'Pass@1':>8}   notes"]
    for r in rows:
        value = "" if r["pass1"] is None else f"{r['pass1']:.2f}"
        lines.append(f"{r['stage']:<16}{value:>8}   {r['note']}".rstrip())
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_grpo(run_dir: str, path: str) -> bool:
    records = read_jsonl(os.path.join(run_dir, "grpo", "metrics.jsonl"))
    steps = [r for r in records if "reward_mean" in r]
    held = [r for r in records if "heldout_reward" in r]
    if not steps:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [r["step"] for r in steps]
    axes[0].plot(x, [r["reward_mean"] for r in steps], label="train reward (mean)", alpha=0.7)
    if held:
        axes[0].plot([r["step"] for r in held], [r["heldout_reward"] for r in held], "o-", label="held-out reward")
    axes[0].set(title="GRPO reward", xlabel="step", ylabel="reward")
    axes[0].legend()
    axes[1].plot(x, [r["response_length"] for r in steps], color="tab:green")
    axes[1].set(title="Response length", xlabel="step", ylabel="tokens")
    axes[2].plot(x, [r["accuracy"] for r in steps], label="accuracy", color="tab:red")
    axes[2].plot(x, [r["format_rate"] for r in steps], label="format rate", color="tab:purple", alpha=0.7)
    axes[2].set(title="Accuracy and format", xlabel="step", ylabel="rate", ylim=(0, 1))
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sft_loss(run_dir: str, path: str) -> bool:
    series = []
    for stage in ("mlp_init", "sft"):
        for file in sorted(glob.glob(os.path.join(run_dir, stage, "*", "metrics.jsonl"))):
            records = [r for r in read_jsonl(file) if "loss" in r and "lr" in r]
            if records:
                series.append((f"{stage}/{os.path.basename(os.path.dirname(file))}", records))
    if not series:
        return False
    series.sort(key=lambda item: item[1][0]["time"])  # the order the runs trained in
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    offset = 0  # runs follow each other: one x axis of optimizer steps across the whole run
    for name, records in series:
        ax.plot([offset + r["step"] for r in records], [r["loss"] for r in records], label=name)
        offset += records[-1]["step"]
    ax.set(title="SFT loss (assistant tokens), runs in order", xlabel="optimizer step (cumulative)", ylabel="loss")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_stages(run_dir: str, path: str) -> bool:
    rows = [r for r in stage_rows(run_dir) if r["pass1"] is not None]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar([r["stage"] for r in rows], [r["pass1"] for r in rows], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylim(0, max(r["pass1"] for r in rows) * 1.15 + 1)
    ax.set(title="Pass@1 on the test split per stage", ylabel="Pass@1 (%)")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _markdown(run_dir: str, plots: dict[str, bool]) -> str:
    m = manifests(run_dir)
    lines = [f"# Run report: {run_dir}", "", "| stage | status | wall time (s) | attempts |", "|---|---|---:|---:|"]
    for stage, man in m.items():
        lines.append(f"| {stage} | {man.get('status')} | {man.get('wall_s', '')} | {man.get('attempts', '')} |")
    lines += ["", "## Score per stage (the shape of the paper's Table 2)", "", "```", format_stage_table(run_dir), "```", ""]
    d = m.get("distill", {}).get("metrics")
    if d:
        lines += ["## Distillation", "", f"- rows out {d.get('rows_out')}, rejected {d.get('rejected')}, "
                  f"revised {d.get('revised')}, model's own accuracy {d.get('self_accuracy')}",
                  f"- penalty {d.get('penalty')}, penalty/length correlation {d.get('penalty_length_correlation')}",
                  f"- judge calls {d.get('judge_calls')}, cache hits {d.get('judge_cache_hits')}, "
                  f"retries {d.get('judge_retries')}, cost ${d.get('judge_cost_usd', 0):.4f}", ""]
    s = m.get("score", {}).get("metrics")
    if s:
        lines += ["## RM scores", "", "| RM | rows |", "|---:|---:|"]
        lines += [f"| {k} | {v} |" for k, v in s.get("histogram", {}).items()] + [""]
    titles = {"stages": "Pass@1 per stage", "sft_loss": "SFT loss", "grpo": "GRPO curves"}
    for name, ok in plots.items():
        lines += [f"## {titles[name]}", "", f"![{titles[name]}]({name}.png)" if ok else "(no data in this run)", ""]
    return "\n".join(lines)


def build_report(run_dir: str, out_dir: str | None = None) -> dict:
    """Write stages.png, sft_loss.png, grpo.png (when their data exist) and report.md; return the paths."""
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    makers = {"stages": plot_stages, "sft_loss": plot_sft_loss, "grpo": plot_grpo}
    plots = {name: fn(run_dir, os.path.join(out_dir, f"{name}.png")) for name, fn in makers.items()}
    markdown = os.path.join(out_dir, "report.md")
    with open(markdown, "w") as f:
        f.write(_markdown(run_dir, plots))
    return {"markdown": markdown, "plots": [os.path.join(out_dir, f"{n}.png") for n, ok in plots.items() if ok]}
