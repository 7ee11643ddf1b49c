"""The SFT stages of the paper as recipes: MLP initialization (2.1), re-assembly (2.1), iterative SFT (2.2).

Each reads and writes the run directory; a finished training run (its `model/`)
is never redone, and an unfinished one resumes from its Ray Train checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.io import read_parquet
from r1v_ray.data.select import all_rows, d_rm, subset, with_errors
from r1v_ray.eval.stage import run_eval
from r1v_ray.eval.table import stage_entry
from r1v_ray.model.assemble import read_meta
from r1v_ray.model.factory import assemble_initial, part_paths
from r1v_ray.run_dir import ERROR_IDS, EVAL_JSON
from r1v_ray.sft.error_set import ErrorSetPass, error_set
from r1v_ray.sft.training_folder import publish, train
from r1v_ray.stages.manifest import StageRun


def mlp_init(cfg: R1VConfig, run: StageRun, train_uri: str) -> tuple[dict, dict]:
    """Paper 2.1: vision encoder + fresh projector + substitute LLM, trained in sub-stages (full, curated, CoT)."""
    init = assemble_initial(cfg.model, cfg.run_dir, run.path_for("assembled"), seed=cfg.seed, corpus=synthetic.corpus)
    current, sub_stages = init, []
    for sub in cfg.sft.mlp_init_stages:
        rows = subset(train_uri, sub.score_column, sub.min_score, sub.sources)
        summary = train(cfg, run, sub.name, current, rows, sub.learning_rate, cfg.model.trainable_prefixes, sub.epochs)
        sub_stages.append({"name": sub.name, "subset": rows.description, **summary})
        current = summary["model"]
    final = run.path_for("model")
    publish(current, final)
    return {"model": final}, {"sub_stages": sub_stages}


def reassemble_stage(cfg: R1VConfig, run: StageRun, mlp_init_model: str) -> tuple[dict, dict]:
    """Paper 2.1: the trained projector onto the reasoning LLM (image tokens added to its tokenizer)."""
    from r1v_ray.model.reassemble import reassemble_checkpoint

    parts = part_paths(cfg.model, cfg.run_dir, synthetic.corpus)
    lineage = dict(projector_from=mlp_init_model, projector_lineage=read_meta(mlp_init_model), llm=parts.reasoning_llm)
    final = run.path_for("model")
    meta = {"stage": "reassemble", **lineage}
    record = reassemble_checkpoint(
        mlp_init_model, parts.reasoning_llm, final, cfg.model.max_image_tiles, meta, cfg.seed
    )
    return {"model": final}, {**record, **lineage}


def iterative_sft(
    cfg: R1VConfig,
    run: StageRun,
    base_model: str,
    train_uri: str,
    test_uri: str,
    before_iteration: Callable[[int, str], str] | None = None,
) -> tuple[dict, dict]:
    """Paper 2.2: stage 1 on D gives M0; then M_t from M_{t-1} on D_rm(tau_t) ∪ E_{t-1}; each M_t evaluated.

    `before_iteration(t, model)` may return a new train_uri (re-distilled data) before iteration t.
    """
    s = cfg.sft
    if len(s.taus) < s.iterations or len(s.iteration_lrs) < s.iterations:
        raise ValueError(f"sft.taus and sft.iteration_lrs need {s.iterations} entries (sft.iterations)")
    prefixes = s.trainable_prefixes or cfg.model.trainable_prefixes
    table_rows = []

    def evaluate(name: str, model: str, data_uri: str, errors_for: str | None = None) -> None:
        """Pass@1 of `model` on the test split; with `errors_for`, the same engine pass generates over the
        training rows for that iteration's error set."""
        path = run.path_for("eval", name, EVAL_JSON)
        ids_done = errors_for is None or store.is_file(run.path_for(errors_for, ERROR_IDS))
        if not store.is_file(path) or not ids_done:
            errors = ErrorSetPass(cfg, data_uri) if errors_for else None
            run_eval(cfg, model, test_uri, store.dirname(path), name, errors.side_pass() if errors else None)
            if errors:
                errors.save(run.path_for(errors_for))
        table_rows.append(stage_entry(name, store.dirname(path), table_rows[-1] if table_rows else None))
        run.record(table=table_rows)

    evaluate("reassembled", base_model, train_uri)
    m0 = train(cfg, run, "M0", base_model, all_rows(train_uri), s.stage1_learning_rate, prefixes, s.epochs)
    current = m0["model"]
    evaluate("M0", current, train_uri, errors_for="M1" if s.iterations else None)
    iterations = []
    for t in range(1, s.iterations + 1):
        if before_iteration is not None:
            train_uri = before_iteration(t, current)
        name = f"M{t}"
        errors_uri, err_stats = error_set(run.path_for(name), train_uri)
        d = d_rm(train_uri, s.rm_score_column, s.taus[t - 1])
        wrong_ids = read_parquet(errors_uri, columns=["id"]).column("id").to_pylist()  # E: the one set held whole
        summary = train(cfg, run, name, current, with_errors(d, wrong_ids), s.iteration_lrs[t - 1], prefixes, s.epochs)
        iterations.append(
            {
                "t": t,
                "tau": s.taus[t - 1],
                "d_rm": d.description,
                "d_rm_rows": d.count(),
                "error_set": err_stats,
                **summary,
            }
        )
        current = summary["model"]
        evaluate(name, current, train_uri, errors_for=f"M{t + 1}" if t < s.iterations else None)
    final = run.path_for("model")
    publish(current, final)
    return {"model": final}, {"table": table_rows, "iterations": iterations, "stage1": m0}
