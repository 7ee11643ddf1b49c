"""The report's statistics from a hand-made run directory: every number below is worked out by hand."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from fake_run_dir import write

from r1v_ray.eval.scoring import score_rows
from r1v_ray.eval.table import per_row_text, stage_entry
from r1v_ray.report import build_report
from r1v_ray.report_stats import format_chance_table, format_stats_table

ROWS = [  # two multiple-choice rows answered A, two counting rows
    {"id": "r1", "answer": "A", "choices": ["circle", "square", "triangle"], "category": "shape_kind"},
    {"id": "r2", "answer": "A", "choices": ["square", "circle", "triangle"], "category": "shape_kind"},
    {"id": "r3", "answer": "3", "choices": None, "category": "count_color"},
    {"id": "r4", "answer": "1", "choices": None, "category": "count_color"},
]
# Each row's correctness in runs 1 and 2, per evaluated model
CORRECT = {
    "reassembled": [[0, 0], [0, 0], [0, 0], [0, 0]],  # 0 ± 0
    "M0": [[1, 0], [1, 0], [1, 0], [1, 0]],  # runs 100, 0: 50 ± 70.71; every row +0.5 over re-assembled
    "M1": [[1, 1], [1, 0], [1, 0], [1, 0]],  # runs 100, 25: 62.5 ± 53.03; only r1 gains 0.5 over M0
    "GRPO": [[1, 1], [1, 1], [1, 1], [1, 1]],  # 100 ± 0; r2..r4 gain 0.5 over M1
}


def _eval_dir(path: str, correct: list[list[int]], per_row: bool = True) -> str:
    """eval.json (and per_row.jsonl) as run_eval writes them, scored from completions."""
    rows = [
        {
            **r,
            "source": f"synthetic/{r['category']}",
            "completions": [f"\\boxed{{{r['answer'] if c else 'Z'}}}" for c in cs],
        }
        for r, cs in zip(ROWS, correct)
    ]
    report = score_rows(rows, runs=2)
    rows_text = per_row_text(report.pop("per_row"))
    write(os.path.join(path, "eval.json"), report)
    if per_row:
        with open(os.path.join(path, "per_row.jsonl"), "w") as f:
            f.write(rows_text)
    return path


def _parquet(path: str, penalty: list[float], tokens: list[int]) -> None:
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table({"rep_penalty": penalty, "generated_tokens": tokens}), os.path.join(path, "part-0.parquet"))


def _run_dir(root) -> str:
    run = str(root / "run")
    table = [{"model": m, "pass@1": -1.0} for m in ("reassembled", "M0", "M1")]  # the eval folders win over these
    iterations = [
        {
            "t": 1,
            "tau": 2,
            "d_rm_rows": 9,
            "rows": 11,
            "error_set": {"generated": 12, "wrong": 5, "train_accuracy": 7 / 12},
        }
    ]
    write(f"{run}/sft/manifest.json", {"status": "complete", "metrics": {"table": table, "iterations": iterations}})
    for model in ("reassembled", "M0", "M1"):
        _eval_dir(f"{run}/sft/eval/{model}", CORRECT[model])
    _eval_dir(f"{run}/grpo/eval", CORRECT["GRPO"])
    write(f"{run}/grpo/manifest.json", {"status": "complete", "metrics": {"eval_pass1": 100.0}})
    write(
        f"{run}/grpo/metrics.jsonl",
        [{"step": 0, "heldout_reward": 0.1, "heldout_response_length": 30.0}]
        + [{"step": s, "response_length": 20 + 2 * s, "reward_mean": 0.1} for s in range(1, 11)]
        + [{"step": 10, "heldout_reward": 0.2, "heldout_response_length": 30.5}],
    )
    _parquet(f"{run}/distill/data", [1.0 + 0.05 * i for i in range(10)], [100 - 5 * i for i in range(10)])
    _parquet(f"{run}/sft/M1/redistill/distill/data", [1.0, 1.1, 1.2], [10, 20, 30])
    write(f"{run}/sft/M1/redistill/done.json", {"distill": {"rows_out": 3}, "score": {"histogram": {"0": 1, "5": 2}}})
    write(f"{run}/score/manifest.json", {"status": "complete", "metrics": {"histogram": {"3": 2, "4": 3, "5": 5}}})
    return run


def test_stage_table_mean_std_and_paired_ci(tmp_path):
    lines = format_stats_table(_run_dir(tmp_path)).splitlines()
    assert lines[0].split()[:4] == ["stage", "Pass@1", "±", "std"]
    assert lines[1].split() == ["re-assembled", "0.00", "±", "0.00", "2", "4"]
    assert lines[2].split()[3:7] == ["50.00", "±", "70.71", "2"]
    assert lines[2].endswith("+50.00 [+50.00, +50.00] vs re-assembled")  # every row gains the same
    # r1 alone gains 12.5 points per resampled copy: K ~ Binomial(4, 1/4) copies, 2.5% / 97.5% at K = 0 / 3
    assert "62.50 ± 53.03" in lines[3] and lines[3].endswith("+12.50 [+0.00, +37.50] vs stage 1 (M0)")
    # r2..r4 gain: 50 - 12.5 K with K copies of r1; 2.5% at K = 3 (P(K >= 3) = 0.051), 97.5% at K = 0
    assert lines[4].startswith("GRPO") and "100.00 ± 0.00" in lines[4]
    assert lines[4].endswith("+37.50 [+12.50, +50.00] vs M1")
    assert lines[5] == "(one test row = 25.00 points of Pass@1 at 4 rows)"


def test_the_mlp_init_model_heads_the_table(tmp_path):
    """MLP-init runs first in the paper's order; re-assembly is compared against it (paper: 64.0 -> 60.2)."""
    run = _run_dir(tmp_path)
    _eval_dir(f"{run}/mlp_init/eval", CORRECT["M0"])
    write(f"{run}/mlp_init/manifest.json", {"status": "complete", "metrics": {"eval_pass1": 50.0}})
    lines = format_stats_table(run).splitlines()
    assert lines[1].split() == ["MLP-init", "50.00", "±", "70.71", "2", "4"]
    assert lines[2].startswith("re-assembled") and lines[2].endswith("-50.00 [-50.00, -50.00] vs MLP-init")


def test_chance_table(tmp_path):
    md = format_chance_table(_run_dir(tmp_path)).splitlines()
    assert md[0] == "| task | rows | chance | most common answer | re-assembled | stage 1 (M0) | M1 | GRPO |"
    assert md[2] == "| count_color | 2 | 14.29 | 50.00 | 0.00 | 50.00 | 50.00 | 100.00 |"  # chance 1/7
    assert md[3] == "| shape_kind | 2 | 33.33 | 100.00 | 0.00 | 50.00 | 75.00 | 100.00 |"
    assert md[4] == "| all | 4 | 23.81 | 75.00 | 0.00 | 50.00 | 62.50 | 100.00 |"  # (2/7 + 2/3) / 4


def test_stage_entry_for_the_manifest(tmp_path):
    a = stage_entry("reassembled", _eval_dir(str(tmp_path / "a"), CORRECT["reassembled"]))
    b = stage_entry("M0", _eval_dir(str(tmp_path / "b"), CORRECT["M0"]), a)
    assert a["vs_previous"] is None and a["n"] == 4 and a["runs"] == [0.0, 0.0]
    assert (b["model"], b["pass@1"], b["pass@1_std"], b["runs"]) == ("M0", 50.0, 70.711, [100.0, 0.0])
    assert b["vs_previous"] == {
        "model": "reassembled",
        **{"diff": 50.0, "lo": 50.0, "hi": 50.0, "n": 4, "samples": 10_000, "seed": 0, "level": 0.95},
    }
    old = stage_entry("M1", _eval_dir(str(tmp_path / "c"), CORRECT["M1"], per_row=False), b)
    assert old["pass@1"] == 62.5 and "no per-row scores" in old["vs_previous"]["unavailable"]
    other = _eval_dir(str(tmp_path / "d"), CORRECT["M1"])
    with open(os.path.join(other, "per_row.jsonl"), "a") as f:
        f.write(json.dumps({"id": "r9", "category": "x", "answer": "1", "correct": [1, 1]}) + "\n")
    assert "1 only in this one ['r9']" in stage_entry("M1", other, b)["vs_previous"]["unavailable"]


def test_report_sections(tmp_path):
    run = _run_dir(tmp_path)
    written = build_report(run)
    assert os.path.join(run, "report", "stages.png") in written["plots"]
    md = open(written["markdown"]).read()
    assert "+37.50 [+12.50, +50.00] vs M1" in md and "| all | 4 | 23.81 | 75.00 |" in md
    # DRLC: length falls 5 tokens per 0.05 of penalty (r = -1); bins of two rows
    assert "Distillation: 10 rows, Pearson r(penalty, generated tokens) = -1.000" in md
    assert "| 1.000 – 1.050 | 2 | 97.5 |" in md and "| 1.400 – 1.450 | 2 | 57.5 |" in md
    assert "Re-distillation before M1: 3 rows, Pearson r(penalty, generated tokens) = +1.000" in md
    # RM: share, |D_rm(tau)| = rows scoring >= tau, a bar scaled to the largest count
    assert "| 3 | 2 | 20.0% | 10 | ######## |" in md and "| 5 | 5 | 50.0% | 5 | #################### |" in md
    assert "Re-scored before M1:" in md and "| 0 | 1 | 33.3% | 3 | ########## |" in md
    assert "| 1 | 2 | 9 | 5 | 0.583 | 11 |" in md  # t, tau_t, |D_rm(tau_t)|, |E_0|, M0's accuracy, rows trained
    assert "Training batches: 10 points; Pearson r(step, response length) = +1.000, slope +2.0000 tokens" in md
    # the held-out passes (step 0 included) are a series of their own
    assert "Held-out prompts (the same prompts and seeds at each point): 2 points;" in md
    assert "slope +0.0500 tokens per step" in md and "| 0 | 30.00 |" in md and "| 10 | 30.50 |" in md
    assert "| 1 – 2 | 23.0 |" in md and "| 9 – 10 | 39.0 |" in md


def test_iterative_sft_table_entries_carry_std_and_ci(tmp_path, monkeypatch):
    """The SFT manifest's table (built while the stage runs) gains std, runs and the CI to the model before."""
    from r1v_ray.config import load_config
    from r1v_ray.stages import sft
    from r1v_ray.stages.manifest import StageRun

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "sft.iterations=0"])
    monkeypatch.setattr(
        sft, "run_eval", lambda cfg, model, data, out_dir, name, side, workers=None: _eval_dir(out_dir, CORRECT[name])
    )
    (tmp_path / "m0").mkdir()
    monkeypatch.setattr(sft, "train", lambda *args, **kw: {"model": str(tmp_path / "m0")})
    _, metrics = sft.iterative_sft(cfg, StageRun(cfg, "sft"), "base", "train-uri", "test-uri")
    first, m0 = metrics["table"]
    assert (first["model"], first["pass@1"], first["pass@1_std"], first["vs_previous"]) == (
        "reassembled",
        0.0,
        0.0,
        None,
    )
    assert (m0["model"], m0["pass@1"], m0["pass@1_std"], m0["runs"]) == ("M0", 50.0, 70.711, [100.0, 0.0])
    assert (m0["vs_previous"]["model"], m0["vs_previous"]["lo"], m0["vs_previous"]["hi"]) == ("reassembled", 50.0, 50.0)


def test_stage1_epochs_set_m0s_passes(tmp_path, monkeypatch):
    """sft.stage1_epochs sets M0's passes over D; unset, M0 takes sft.epochs."""
    from r1v_ray.config import load_config
    from r1v_ray.stages import sft
    from r1v_ray.stages.manifest import StageRun

    overrides = ["sft.iterations=0", "sft.epochs=2", "sft.stage1_epochs=5"]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", *overrides])
    monkeypatch.setattr(
        sft, "run_eval", lambda cfg, model, data, out_dir, name, side, workers=None: _eval_dir(out_dir, CORRECT[name])
    )
    epochs = []

    def fake_train(cfg, run, name, model, rows, lr, prefixes, n_epochs):
        epochs.append((name, n_epochs))
        return {"model": str(tmp_path / name)}

    monkeypatch.setattr(sft, "train", fake_train)
    sft.iterative_sft(cfg, StageRun(cfg, "sft"), "base", "train-uri", "test-uri")
    assert epochs == [("M0", 5)]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run2'}", "sft.iterations=0", "sft.epochs=2"])
    epochs.clear()
    sft.iterative_sft(cfg, StageRun(cfg, "sft"), "base", "train-uri", "test-uri")
    assert epochs == [("M0", 2)]


def test_m0_trains_while_the_reassembled_model_is_evaluated(tmp_path, monkeypatch):
    """M0's training does not wait for the re-assembled model's evaluation; the table keeps its order."""
    import threading

    from r1v_ray.config import load_config
    from r1v_ray.stages import sft
    from r1v_ray.stages.manifest import StageRun

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "sft.iterations=0"])
    m0_started = threading.Event()

    def fake_eval(cfg, model, data, out_dir, name, side, workers=None):
        if name == "reassembled" and not m0_started.wait(timeout=20):
            raise AssertionError("M0's training did not start while the re-assembled model was evaluated")
        return _eval_dir(out_dir, CORRECT[name])

    def fake_train(*args, **kw):
        m0_started.set()
        return {"model": str(tmp_path / "m0")}

    monkeypatch.setattr(sft, "run_eval", fake_eval)
    monkeypatch.setattr(sft, "train", fake_train)
    _, metrics = sft.iterative_sft(cfg, StageRun(cfg, "sft"), "base", "train-uri", "test-uri")
    assert [row["model"] for row in metrics["table"]] == ["reassembled", "M0"]


def test_with_held_workers_each_model_is_scored_while_the_next_one_trains(tmp_path, monkeypatch):
    """M_{t-1}'s error set gets its own pass first; its test score is generated during M_t's training."""
    import threading

    from r1v_ray import store
    from r1v_ray.config import load_config
    from r1v_ray.run_dir import ERROR_IDS
    from r1v_ray.stages import sft
    from r1v_ray.stages.manifest import StageRun

    sets = [f"run_dir={tmp_path / 'run'}", "sft.iterations=2", "sft.keep_rollout_engines=true"]
    cfg = load_config(None, sets)
    training = {name: threading.Event() for name in ("M0", "M1", "M2")}
    order = []

    class HeldWorkers:
        loads: dict = {}

        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def serving(self, model):
            return [f"worker holding {model}"]

    class ErrorSetPass:
        def __init__(self, cfg, data_uri):
            pass

        def generate(self, model, workers):
            assert workers == [f"worker holding {model}"]
            order.append(("errors", model))

        def save(self, out_dir):
            store.write_json(store.join(out_dir, ERROR_IDS), {"ids": []})

    def fake_eval(cfg, model, data, out_dir, name, side, workers=None):
        assert side is None, "the error set rode along with the evaluation"
        following = {"reassembled": "M0", "M0": "M1", "M1": "M2"}.get(name)
        if following and not training[following].wait(timeout=20):
            raise AssertionError(f"{following} did not train while {name} was evaluated")
        order.append(("eval", name))
        return _eval_dir(out_dir, CORRECT.get(name, CORRECT["M1"]))

    def fake_train(cfg, run, name, *args):
        training[name].set()
        return {"model": name}

    def fake_iteration(cfg, run, t, current, train_uri, prefixes):
        training[f"M{t}"].set()
        order.append(("train", f"M{t}"))
        return {"model": f"M{t}"}

    for name, fake in [("HeldWorkers", HeldWorkers), ("ErrorSetPass", ErrorSetPass), ("run_eval", fake_eval)]:
        monkeypatch.setattr(sft, name, fake)
    monkeypatch.setattr(sft, "train", fake_train)
    monkeypatch.setattr(sft, "_iteration", fake_iteration)
    _, metrics = sft.iterative_sft(cfg, StageRun(cfg, "sft"), "base", "train-uri", "test-uri")
    assert [row["model"] for row in metrics["table"]] == ["reassembled", "M0", "M1", "M2"]
    assert order.index(("errors", "M0")) < order.index(("train", "M1"))
    assert order.index(("errors", "M1")) < order.index(("train", "M2"))
