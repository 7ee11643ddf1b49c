"""The SFT stages of the paper as recipes: MLP initialization (2.1), re-assembly (2.1), iterative SFT (2.2).

Each reads and writes the run directory; a finished training run (its `model/`)
is never redone, and an unfinished one resumes from its Ray Train checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pyarrow as pa
import ray
from transformers import AutoProcessor

from r1v_ray.config import R1VConfig
from r1v_ray.data.io import ParquetSink, read_parquet
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.engines.rollout.actor import generate_dataset
from r1v_ray.eval.scoring import eval_request
from r1v_ray.eval.stage import run_eval
from r1v_ray.model.assemble import load_checkpoint, read_meta, save_checkpoint
from r1v_ray.model.factory import assemble_initial, load_llm, part_paths
from r1v_ray.rewards import accuracy_reward
from r1v_ray.runs import StageRun
from r1v_ray.sft.data import d_rm, filter_by_length, select_subset, union_by_id
from r1v_ray.sft.run import run_sft
from r1v_ray.sft.trainer import SFTJob


def _model_done(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json"))


def train(cfg: R1VConfig, run: StageRun, name: str, init: str, table: pa.Table, lr: float, prefixes: list[str],
          epochs: int = 1) -> dict:
    """One SFT run under `run.dir/name`: length filter, Ray Train, HF checkpoint at `name/model`."""
    out = run.path_for(name)
    final = os.path.join(out, "model")
    summary_path = os.path.join(out, "summary.json")
    if _model_done(final) and os.path.exists(summary_path):
        with open(summary_path) as f:
            return json.load(f)
    processor = AutoProcessor.from_pretrained(init)
    data = os.path.join(out, "data")
    if not os.path.exists(data):
        counts = filter_by_length(table, processor, cfg.sft.max_length, data + ".partial",
                                  os.path.join(out, "rejected"), stage=f"{run.stage}/{name}")
        os.replace(data + ".partial", data)
    n_rows = read_parquet(data, columns=["id"]).num_rows
    s = cfg.sft
    job = SFTJob(
        init_checkpoint=init, data_uri=data, output_dir=out, learning_rate=lr, stage=f"{run.stage}/{name}", epochs=epochs,
        global_batch_size=s.global_batch_size, micro_batch_size=s.micro_batch_size, max_length=s.max_length,
        weight_decay=s.weight_decay, warmup_ratio=s.warmup_ratio, lr_scheduler=s.lr_scheduler, zero_stage=s.zero_stage,
        num_workers=s.num_workers, use_gpu=s.use_gpu, dtype=cfg.model.dtype if s.use_gpu else "float32",
        trainable_prefixes=prefixes, checkpoint_every_steps=s.checkpoint_every_steps,
        log_every_steps=s.log_every_steps, node_resource=s.node_resource, seed=s.seed,
    )
    run_sft(job, max_failures=s.max_failures)
    summary = {"model": final, "rows": n_rows, "rows_in": table.num_rows, "learning_rate": lr, "init": init,
               "trainable_prefixes": prefixes}
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def mlp_init(cfg: R1VConfig, run: StageRun, train_uri: str) -> tuple[dict, dict]:
    """Paper 2.1: vision encoder + fresh projector + substitute LLM, trained in sub-stages (full, curated, CoT)."""
    init = assemble_initial(cfg.model, cfg.run_dir, run.path_for("assembled"), seed=cfg.seed)
    table = read_parquet(train_uri)
    current, sub_stages = init, []
    for sub in cfg.sft.mlp_init_stages:
        subset, how = select_subset(table, sub.score_column, sub.min_score, sub.sources)
        summary = train(cfg, run, sub.name, current, subset, sub.learning_rate, cfg.model.trainable_prefixes, sub.epochs)
        sub_stages.append({"name": sub.name, "subset": how, **summary})
        current = summary["model"]
    final = run.path_for("model")
    _publish(current, final)
    return {"model": final}, {"sub_stages": sub_stages}


def _publish(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def reassemble_stage(cfg: R1VConfig, run: StageRun, mlp_init_model: str) -> tuple[dict, dict]:
    """Paper 2.1: the trained projector onto the reasoning LLM (image tokens added to its tokenizer)."""
    from r1v_ray.model.reassemble import reassemble

    parts = part_paths(cfg.model, cfg.run_dir)
    source, source_processor = load_checkpoint(mlp_init_model)
    llm, tok = load_llm(parts.reasoning_llm)
    model, processor, record = reassemble(source, llm, tok, cfg.model.max_image_tiles, source_processor.image_processor)
    record.update(projector_from=mlp_init_model, projector_lineage=read_meta(mlp_init_model), llm=parts.reasoning_llm)
    final = run.path_for("model")
    save_checkpoint(model, processor, final, meta={"stage": "reassemble", **record})
    return {"model": final}, record


def error_set(cfg: R1VConfig, model_path: str, train_uri: str, out_dir: str) -> tuple[str, dict]:
    """E = rows whose Φ(M(x)) != y, by greedy generation through the rollout engine (paper 2.2)."""
    s = cfg.sft
    ds = ray.data.read_parquet(train_uri)

    def build(row):
        return eval_request(row, 1, s.error_set_max_tokens, 0.0, 1.0, seed=cfg.seed)

    wrong, rejected, n = [], [], 0
    for row in generate_dataset(ds, model_path, cfg.rollout, build, dtype=cfg.model.dtype).iter_rows():
        n += 1
        if row["error"] is not None:
            rejected.append({"id": str(row["id"]), "stage": "error_set", "reason": row["error"], "row": None, "image": None})
            continue
        choices = list(row["choices"]) if row["choices"] is not None and len(row["choices"]) else None
        if accuracy_reward(row["completions"][0], row["answer"], choices) == 0.0:
            wrong.append(str(row["id"]))
    table, wrong_ids = read_parquet(train_uri), set(wrong)
    errors = table.filter(pa.array([i in wrong_ids for i in table.column("id").to_pylist()], type=pa.bool_()))
    path = os.path.join(out_dir, "errors")
    with ParquetSink(path) as sink:
        sink.write(errors)
    with ParquetSink(os.path.join(out_dir, "errors_rejected"), schema=REJECTED_SCHEMA) as sink:
        if rejected:
            sink.write(rejected_table(rejected))
    return path, {"generated": n, "wrong": len(wrong), "rejected": len(rejected), "train_accuracy": 1 - len(wrong) / max(1, n - len(rejected))}


def iterative_sft(cfg: R1VConfig, run: StageRun, base_model: str, train_uri: str, test_uri: str,
                  before_iteration: Callable[[int, str], str] | None = None) -> tuple[dict, dict]:
    """Paper 2.2: stage 1 on D gives M0; then M_t from M_{t-1} on D_rm(tau_t) ∪ E_{t-1}; each M_t evaluated.

    `before_iteration(t, model)` may return a new train_uri (re-distilled data) before iteration t.
    """
    s = cfg.sft
    if len(s.taus) < s.iterations or len(s.iteration_lrs) < s.iterations:
        raise ValueError(f"sft.taus and sft.iteration_lrs need {s.iterations} entries (sft.iterations)")
    prefixes = s.trainable_prefixes or cfg.model.trainable_prefixes
    table_rows = []

    def evaluate(name: str, model: str) -> float:
        path = run.path_for("eval", name, "eval.json")
        if not os.path.exists(path):
            run_eval(cfg, model, test_uri, os.path.dirname(path), name)
        with open(path) as f:
            score = json.load(f)["overall"]["pass@1_mean"]
        table_rows.append({"model": name, "pass@1": score})
        run.record(table=table_rows)
        return score

    evaluate("reassembled", base_model)
    m0 = train(cfg, run, "M0", base_model, read_parquet(train_uri), s.stage1_learning_rate, prefixes, s.epochs)
    current = m0["model"]
    evaluate("M0", current)
    iterations = []
    for t in range(1, s.iterations + 1):
        if before_iteration is not None:
            train_uri = before_iteration(t, current)
        name = f"M{t}"
        errors_uri, err_stats = _cached_error_set(cfg, run, current, train_uri, name)
        d, how = d_rm(read_parquet(train_uri), s.rm_score_column, s.taus[t - 1])
        data = union_by_id(d, read_parquet(errors_uri))
        summary = train(cfg, run, name, current, data, s.iteration_lrs[t - 1], prefixes, s.epochs)
        iterations.append({"t": t, "tau": s.taus[t - 1], "d_rm": how, "d_rm_rows": d.num_rows,
                           "error_set": err_stats, **summary})
        current = summary["model"]
        evaluate(name, current)
    final = run.path_for("model")
    _publish(current, final)
    return {"model": final}, {"table": table_rows, "iterations": iterations, "stage1": m0}


def _cached_error_set(cfg: R1VConfig, run: StageRun, model: str, train_uri: str, name: str) -> tuple[str, dict]:
    out = run.path_for(name)
    stats_path = os.path.join(out, "error_set.json")
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            return os.path.join(out, "errors"), json.load(f)
    os.makedirs(out, exist_ok=True)
    path, stats = error_set(cfg, model, train_uri, out)
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return path, stats
