"""The run report from a hand-made run directory: plots, Markdown, the stage table; partial runs too."""

from __future__ import annotations

import json
import os

from PIL import Image

from r1v_ray.report import build_report, format_stage_table


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if isinstance(obj, list):
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f)


def _run_dir(root) -> str:
    run = str(root / "run")
    table = [{"model": "reassembled", "pass@1": 0.0}, {"model": "M0", "pass@1": 11.5}, {"model": "M1", "pass@1": 17.25}]
    _write(f"{run}/sft/manifest.json", {"status": "complete", "wall_s": 300.5, "attempts": 1, "metrics": {"table": table}})
    _write(f"{run}/sft/M1/redistill/done.json", {"data": "x"})
    for i, name in enumerate(("M0", "M1")):
        _write(f"{run}/sft/{name}/metrics.jsonl",
               [{"step": s, "time": 100 * i + s, "loss": 5.0 - i - s / 10, "lr": 1e-3} for s in (4, 8, 12)])
    grpo = [{"step": 0, "heldout_reward": 0.125}]
    grpo += [{"step": s, "reward_mean": 0.1 * s, "response_length": 30 + s, "accuracy": 0.05 * s, "format_rate": 0.2}
             for s in (1, 2, 3)]
    grpo += [{"step": 3, "heldout_reward": 0.3125}]
    _write(f"{run}/grpo/metrics.jsonl", grpo)
    _write(f"{run}/grpo/manifest.json", {"status": "complete", "wall_s": 90, "attempts": 2, "metrics": {
        "heldout": [grpo[0], grpo[-1]], "eval_pass1": 19.5}})
    _write(f"{run}/score/manifest.json", {"status": "complete", "metrics": {"histogram": {"4": 3, "5": 9}}})
    return run


def test_report_writes_plots_and_summary(tmp_path):
    run = _run_dir(tmp_path)
    written = build_report(run)
    assert sorted(os.path.basename(p) for p in written["plots"]) == ["grpo.png", "sft_loss.png", "stages.png"]
    for path in written["plots"]:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300
    md = open(written["markdown"]).read()
    assert "| grpo | complete | 90 | 2 |" in md and "17.25" in md and "| 5 | 9 |" in md
    assert "![GRPO curves](grpo.png)" in md


def test_stage_table_and_partial_runs(tmp_path):
    run = _run_dir(tmp_path)
    table = format_stage_table(run)
    lines = table.splitlines()
    assert lines[1].split() == ["re-assembled", "0.00"] and lines[2].split()[:4] == ["stage", "1", "(M0)", "11.50"]
    assert "data re-distilled by M0" in lines[3] and "17.25" in lines[3]
    assert lines[4].startswith("GRPO") and "19.50" in lines[4] and "0.125 -> 0.312 over 3 steps" in lines[4]
    only_grpo = tmp_path / "partial"
    _write(str(only_grpo / "grpo" / "metrics.jsonl"), [{"step": 1, "reward_mean": 0.1, "response_length": 3,
                                                       "accuracy": 0.0, "format_rate": 0.0}])
    written = build_report(str(only_grpo))
    assert [os.path.basename(p) for p in written["plots"]] == ["grpo.png"]
    assert "(no data in this run)" in open(written["markdown"]).read()
    assert "no SFT or GRPO stage" in format_stage_table(str(tmp_path / "empty"))
