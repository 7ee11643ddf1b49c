"""The run report from a hand-made run directory: plots, Markdown, the stage table's notes; partial runs too."""

from __future__ import annotations

import os

from fake_run_dir import write
from PIL import Image

from r1v_ray.report import build_report, sft_runs
from r1v_ray.report_stats import format_stats_table


def _run_dir(root) -> str:
    run = str(root / "run")
    table = [{"model": "reassembled", "pass@1": 0.0}, {"model": "M0", "pass@1": 11.5}, {"model": "M1", "pass@1": 17.25}]
    write(
        f"{run}/sft/manifest.json", {"status": "complete", "wall_s": 300.5, "attempts": 1, "metrics": {"table": table}}
    )
    write(f"{run}/sft/M1/redistill/done.json", {"data": "x", "distill": {"rows_out": 41, "rejected": 3}})
    # a judge-side metrics file below an SFT run: not an SFT loss curve
    write(f"{run}/sft/M1/redistill/distill/metrics.jsonl", [{"step": 1, "time": 1, "rows_out": 41}])
    write(f"{run}/mlp_init/full/metrics.jsonl", [{"step": 2, "time": 10, "loss": 6.5, "lr": 2e-3}])
    for i, name in enumerate(("M0", "M1")):
        write(
            f"{run}/sft/{name}/metrics.jsonl",
            [{"step": s, "time": 100 * (i + 1) + s, "loss": 5.0 - i - s / 10, "lr": 1e-3} for s in (4, 8, 12)],
        )
    grpo = [{"step": 0, "heldout_reward": 0.125, "heldout_accuracy": 0.05}]
    grpo += [
        {
            "step": s,
            "reward_mean": 0.1 * s,
            "response_length": 30 + s,
            "accuracy": 0.05 * s,
            "format_rate": 0.2,
            "loss": -0.1,
        }
        for s in (1, 2, 3)
    ]
    grpo += [{"step": 3, "heldout_reward": 0.3125, "heldout_accuracy": 0.0625}]
    write(f"{run}/grpo/metrics.jsonl", grpo)
    write(
        f"{run}/grpo/manifest.json",
        {
            "status": "complete",
            "wall_s": 90,
            "attempts": 2,
            "metrics": {"heldout": [grpo[0], grpo[-1]], "eval_pass1": 19.5},
        },
    )
    write(f"{run}/score/manifest.json", {"status": "complete", "metrics": {"histogram": {"4": 3, "5": 9}}})
    write(
        f"{run}/distill/manifest.json",
        {
            "status": "failed",
            "attempts": 3,
            "wall_s": 12.25,
            "metrics": {
                "rows_out": 120,
                "rejected": 7,
                "judge_calls": 250,
                "judge_cost_usd": 0.0123,
                "penalty": {"min": 0.0, "max": 0.5, "mean": 0.2},
                "penalty_length_correlation": 0.42,
            },
        },
    )
    return run


def test_report_writes_plots_and_summary(tmp_path):
    run = _run_dir(tmp_path)
    written = build_report(run)
    assert os.path.dirname(written["markdown"]) == os.path.join(run, "report")
    assert sorted(os.path.basename(p) for p in written["plots"]) == ["grpo.png", "sft_loss.png", "stages.png"]
    for path in written["plots"]:
        assert os.path.getsize(path) > 0
        with Image.open(path) as img:
            img.verify()
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    md = open(written["markdown"]).read()
    assert "| grpo | complete | 90.0 | 2 |" in md and "| sft | complete | 300.5 | 1 |" in md
    assert "| distill | failed | 12.2 | 3 |" in md and "| mlp_init | not run | | |" in md
    assert "17.25" in md and "| 5 | 9 | 75.0% |" in md and "| total | 12 | |" in md
    assert "held-out reward: 0.125 at step 0 -> 0.312 at step 3" in md
    assert "held-out accuracy: 0.050 at step 0 -> 0.062 at step 3" in md and "test split: 19.50%" in md
    assert "rows out 120, rejected 7" in md and "correlation 0.420" in md and "cost $0.0123" in md
    assert "Re-distillation before M1:" in md and "rows out 41, rejected 3" in md
    for name in ("grpo", "sft_loss", "stages"):
        assert f"]({name}.png)" in md
    # one SFT curve per training run, in training order; the GRPO and judge JSONL are not SFT curves
    assert [name for name, _ in sft_runs(run)] == ["mlp_init/full", "sft/M0", "sft/M1"]


def test_stage_table_and_partial_runs(tmp_path):
    run = _run_dir(tmp_path)
    table = format_stats_table(run)
    lines = table.splitlines()
    assert lines[1].split() == ["re-assembled", "0.00"] and lines[2].split()[:4] == ["stage", "1", "(M0)", "11.50"]
    assert "data re-distilled by M0" in lines[3] and "17.25" in lines[3]
    assert lines[4].startswith("GRPO") and "19.50" in lines[4] and "0.125 -> 0.312 over 3 steps" in lines[4]
    assert "reward, not Pass@1" in lines[4]
    only_grpo = tmp_path / "partial"
    write(
        str(only_grpo / "grpo" / "metrics.jsonl"),
        [{"step": 1, "reward_mean": 0.1, "response_length": 3, "accuracy": 0.0, "format_rate": 0.0}],
    )
    os.makedirs(only_grpo / "report")
    (only_grpo / "report" / "stages.png").write_bytes(b"stale")  # from an earlier report: must not survive
    written = build_report(str(only_grpo))
    assert [os.path.basename(p) for p in written["plots"]] == ["grpo.png"]
    assert sorted(written["skipped"]) == ["sft_loss", "stages"]
    assert not os.path.exists(only_grpo / "report" / "stages.png")
    md = open(written["markdown"]).read()
    assert md.count("(no data in this run)") == 2 and "(no distill stage in this run)" in md
    assert "(no score stage in this run)" in md and "(no GRPO stage in this run)" in md
    assert "no SFT or GRPO stage" in format_stats_table(str(tmp_path / "empty"))
    assert build_report(str(tmp_path / "empty"))["plots"] == []
