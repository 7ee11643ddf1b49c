"""The paper's effects in miniature, read from a finished run directory's manifests (issue 13, "Must show").

`paper_effects(run_dir)` collects what each check reads (a local or object-store run directory);
`assert_paper_effects(run_dir)` fails with every effect that is missing, each with its numbers. Pass@1 values
are percentages. Margins are in points.
"""

from __future__ import annotations

from collections import Counter

from r1v_ray import store
from r1v_ray.data.io import read_parquet
from r1v_ray.eval.stats import slope
from r1v_ray.report_stats import response_lengths

# Margins (Pass@1 points). One test row is 0.10 points at the demo's n_test=1000.
WELL_ABOVE_CHANCE = 10.0  # the re-assembled model over the chance level
M0_OVER_REASSEMBLED = 2.0
ITERATION_SLACK = 3.0  # M_t may fall this far below M_{t-1} (two runs of one model differ by about this)
GRPO_OVER_MT = 0.5


def _manifest(run_dir: str, stage: str) -> dict:
    return store.read_json(store.join(run_dir, stage, "manifest.json"))


def chance_level(test_uri: str) -> float:
    """Pass@1 (%) of a model that sees no image: a uniform guess among the options for a multiple-choice
    row, the most frequent answer of its category for an open one (a strong blind baseline)."""
    rows = read_parquet(test_uri, columns=["category", "answer", "choices"]).to_pylist()
    open_answers: dict[str, Counter] = {}
    for r in rows:
        if not r["choices"]:
            open_answers.setdefault(r["category"], Counter())[r["answer"]] += 1
    expected = 0.0
    for r in rows:
        if r["choices"]:
            expected += 1 / len(r["choices"])
        else:
            counts = open_answers[r["category"]]
            expected += max(counts.values()) / sum(counts.values())
    return 100 * expected / max(1, len(rows))


def _redistill_correlations(run_dir: str, iterations: int) -> list[float | None]:
    out = []
    for t in range(1, iterations + 1):
        path = store.join(run_dir, "sft", f"M{t}", "redistill", "done.json")
        if store.is_file(path):
            out.append(store.read_json(path)["distill"].get("penalty_length_correlation"))
    return out


def paper_effects(run_dir: str) -> dict:
    """The numbers the checks compare, from the manifests of mlp_init, distill, score, sft and grpo."""
    mlp, distill, score = (_manifest(run_dir, s) for s in ("mlp_init", "distill", "score"))
    sft, grpo = _manifest(run_dir, "sft"), _manifest(run_dir, "grpo")
    table = {row["model"]: row["pass@1"] for row in sft["metrics"]["table"]}
    iterations = sft["metrics"]["iterations"]
    test = sft["inputs"]["test"]
    histogram = {int(k): v for k, v in score["metrics"]["histogram"].items()}
    error_sets = [it["error_set"]["wrong"] for it in iterations]
    held_steps, held_lengths = response_lengths(run_dir, "heldout_response_length")
    return {
        "chance": chance_level(test["path"] if isinstance(test, dict) else test),
        "mlp_init": mlp["metrics"]["eval_pass1"],
        "reassembled": table["reassembled"],
        "iterative": [table[f"M{t}"] for t in range(len(iterations) + 1)],
        "grpo": grpo["metrics"]["eval_pass1"],
        "grpo_ci_lo": (grpo["metrics"].get("eval", {}).get("vs_previous") or {}).get("lo"),
        "distilled_by": distill["outputs"]["model"],
        "reassembled_model": _manifest(run_dir, "reassemble")["outputs"]["model"],
        "rm_histogram": histogram,
        "d_rm_by_tau": {tau: sum(v for s, v in histogram.items() if s >= tau) for tau in range(1, 6)},
        "d_rm_rows": [it["d_rm_rows"] for it in iterations],
        "error_sets": error_sets,  # |E_0|, |E_1|, ...: E_{t-1} is iteration t's
        # On the held-out prompts (the same prompts and seeds at each point): a training batch's length moves by
        # several tokens with which tasks its 8 prompts drew, which hides a trend of a token or so.
        "grpo_heldout_lengths": held_lengths,
        "grpo_length_slope": slope(held_steps, held_lengths),  # tokens per step
        "penalty_length_correlation": [
            distill["metrics"].get("penalty_length_correlation"),
            *_redistill_correlations(run_dir, len(iterations)),
        ],
    }


def effect_failures(e: dict, grpo_ci: bool = True) -> list[str]:
    """Every effect the run does not show, each with the numbers; `grpo_ci=False` leaves out one: that
    the paired-bootstrap CI of GRPO's gain over M_T lies above 0."""
    bad = []
    if e["distilled_by"] != e["reassembled_model"]:
        bad.append(f"distillation ran with {e['distilled_by']}, not the re-assembled model")
    if e["reassembled"] < e["chance"] + WELL_ABOVE_CHANCE:
        bad.append(f"re-assembled {e['reassembled']:.2f} not {WELL_ABOVE_CHANCE} above chance {e['chance']:.2f}")
    if e["reassembled"] < e["mlp_init"] / 2:
        bad.append(f"re-assembled {e['reassembled']:.2f} below half of MLP-init {e['mlp_init']:.2f}")
    m = e["iterative"]
    if m[0] < e["reassembled"] + M0_OVER_REASSEMBLED:
        bad.append(f"M0 {m[0]:.2f} not {M0_OVER_REASSEMBLED} above re-assembled {e['reassembled']:.2f}")
    for t in range(1, len(m)):
        if m[t] < m[t - 1] - ITERATION_SLACK:
            bad.append(f"M{t} {m[t]:.2f} fell more than {ITERATION_SLACK} below M{t - 1} {m[t - 1]:.2f}")
    if e["grpo"] < m[-1] + GRPO_OVER_MT:
        bad.append(f"GRPO {e['grpo']:.2f} not {GRPO_OVER_MT} above M{len(m) - 1} {m[-1]:.2f}")
    elif grpo_ci and (e.get("grpo_ci_lo") is None or e["grpo_ci_lo"] <= 0):
        bad.append(
            f"GRPO over M{len(m) - 1}: the paired-bootstrap 95% CI's low end {e.get('grpo_ci_lo')} is not above 0"
        )
    lengths = e.get("grpo_heldout_lengths") or []
    if e.get("grpo_length_slope") is None or e["grpo_length_slope"] <= 0 or not lengths or lengths[-1] <= lengths[0]:
        bad.append(
            f"GRPO's mean response length on the held-out prompts does not rise over its steps: "
            f"{lengths}, slope {e.get('grpo_length_slope')}"
        )
    correlations = [c for c in e["penalty_length_correlation"] if c is not None]
    if not correlations or any(c >= 0 for c in correlations):
        bad.append(f"the DRLC penalty does not shorten the chains: penalty-length correlations {correlations}")
    if sum(1 for v in e["rm_histogram"].values() if v) < 3:
        bad.append(f"RM scores take fewer than 3 values: {e['rm_histogram']}")
    sizes = [e["d_rm_by_tau"][tau] for tau in range(1, 6)]
    if len(set(sizes)) < 3:
        bad.append(f"|D_rm(tau)| for tau=1..5 barely falls: {sizes}")
    rows = e["d_rm_rows"]
    if any(b >= a for a, b in zip(rows, rows[1:])):
        bad.append(f"|D_rm(tau_t)| of the iterations does not fall: {rows}")
    errors = e["error_sets"]
    if any(b >= a for a, b in zip(errors, errors[1:])):
        bad.append(f"|E_t| does not fall over t: {errors}")
    return bad


def assert_paper_effects(run_dir: str, grpo_ci: bool = True) -> dict:
    effects = paper_effects(run_dir)
    failures = effect_failures(effects, grpo_ci)
    assert not failures, "the run does not show the paper's effects:\n- " + "\n- ".join(failures) + f"\n{effects}"
    return effects
