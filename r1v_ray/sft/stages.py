"""The SFT stages of the paper as recipes: MLP initialization (2.1), re-assembly (2.1), iterative SFT (2.2).

Each reads and writes the run directory; a finished training run (its `model/`)
is never redone, and an unfinished one resumes from its Ray Train checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
from transformers import AutoProcessor

from r1v_ray import store
from r1v_ray.atomic import write_json_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.io import ParquetSink, count_rows, read_parquet, remove
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.data.select import Selection, all_rows, d_rm, subset, with_errors
from r1v_ray.eval.stage import SidePass, run_eval
from r1v_ray.eval.table import stage_entry
from r1v_ray.model.assemble import checkpoint_complete, read_meta
from r1v_ray.model.factory import assemble_initial, part_paths
from r1v_ray.prompts import paper_request, row_choices
from r1v_ray.rewards import accuracy_reward
from r1v_ray.run_dir import ERROR_IDS, EVAL_JSON, TRAIN_DATA, TRAIN_MODEL, TRAIN_REJECTED, TRAIN_SUMMARY
from r1v_ray.runs import StageRun
from r1v_ray.sft.data import filter_by_length
from r1v_ray.sft.run import run_sft
from r1v_ray.sft.trainer import SFTJob


def _model_done(path: str) -> bool:
    return checkpoint_complete(path)  # config.json is written before the weights: not proof enough


def train(
    cfg: R1VConfig,
    run: StageRun,
    name: str,
    init: str,
    selection: Selection,
    lr: float,
    prefixes: list[str],
    epochs: int = 1,
) -> dict:
    """One SFT run under `run.dir/name`: the selection streamed through the length filter into `name/data`,
    Ray Train, HF checkpoint at `name/model`. An empty training set stops here, before any worker starts."""
    out = run.path_for(name)
    final = store.join(out, TRAIN_MODEL)
    summary_path = store.join(out, TRAIN_SUMMARY)
    if _model_done(final) and store.is_file(summary_path):
        return store.read_json(summary_path)
    processor = AutoProcessor.from_pretrained(store.stage_in(init))
    data, rejected = store.join(out, TRAIN_DATA), store.join(out, TRAIN_REJECTED)

    def write_data(target: str) -> None:
        remove(rejected)  # a crashed attempt's parts
        filter_by_length(selection, processor, cfg.sft.max_length, target, rejected, stage=f"{run.stage}/{name}")

    store.write_dir_once(data, write_data)  # `data` is complete only once the filter has written all of it
    n_rows, too_long = count_rows(data), count_rows(rejected)
    if n_rows == 0:
        raise ValueError(
            f"{run.stage}/{name}: no training rows: {selection.description} of {selection.uri} keeps none "
            f"({too_long} selected rows are longer than sft.max_length={cfg.sft.max_length}, see {rejected}); "
            "widen the selection (sft.taus, sft.mlp_init_stages sources / min_score) or raise sft.max_length"
        )
    job = SFTJob(
        init_checkpoint=init,
        data_uri=data,
        output_dir=out,
        learning_rate=lr,
        sft=cfg.sft,
        stage=f"{run.stage}/{name}",
        epochs=epochs,
        dtype=cfg.model.dtype if cfg.sft.use_gpu else "float32",
        trainable_prefixes=prefixes,
    )
    run_sft(job)
    summary = {
        "model": final,
        "rows": n_rows,
        "rows_in": n_rows + too_long,
        "learning_rate": lr,
        "init": init,
        "trainable_prefixes": prefixes,
    }
    write_json_atomic(summary_path, summary, indent=2)
    return summary


def mlp_init(cfg: R1VConfig, run: StageRun, train_uri: str, test_uri: str | None = None) -> tuple[dict, dict]:
    """Paper 2.1: vision encoder + fresh projector + substitute LLM, trained in sub-stages (full, curated, CoT).
    With `test_uri`, the trained model's Pass@1 (the score re-assembly is compared against)."""
    init = assemble_initial(
        cfg.model, cfg.run_dir, run.path_for("assembled"), seed=cfg.seed, corpus=synthetic.corpus, task=synthetic
    )
    current, sub_stages = init, []
    for sub in cfg.sft.mlp_init_stages:
        rows = subset(train_uri, sub.score_column, sub.min_score, sub.sources)
        summary = train(cfg, run, sub.name, current, rows, sub.learning_rate, cfg.model.trainable_prefixes, sub.epochs)
        sub_stages.append({"name": sub.name, "subset": rows.description, **summary})
        current = summary["model"]
    final = run.path_for("model")
    _publish(current, final)
    metrics: dict = {"sub_stages": sub_stages}
    if test_uri is not None:
        report = run_eval(cfg, final, test_uri, run.path_for("eval"), "MLP-init")
        metrics["eval_pass1"] = report["overall"]["pass@1_mean"]
    return {"model": final}, metrics


def _publish(src: str, dst: str) -> None:
    store.copy_tree(src, dst)  # whole, or (a crash) without its config.json: redone


def reassemble_stage(cfg: R1VConfig, run: StageRun, mlp_init_model: str) -> tuple[dict, dict]:
    """Paper 2.1: the trained projector onto the reasoning LLM (image tokens added to its tokenizer)."""
    from r1v_ray.model.reassemble import reassemble_checkpoint

    parts = part_paths(cfg.model, cfg.run_dir, synthetic.corpus, synthetic)
    lineage = dict(projector_from=mlp_init_model, projector_lineage=read_meta(mlp_init_model), llm=parts.reasoning_llm)
    final = run.path_for("model")
    meta = {"stage": "reassemble", **lineage}
    record = reassemble_checkpoint(
        mlp_init_model, parts.reasoning_llm, final, cfg.model.max_image_tiles, meta, cfg.seed
    )
    return {"model": final}, {**record, **lineage}


class ErrorSetPass:
    """E's ids by greedy generation over the training rows: those whose Φ(M(x)) != y (paper 2.2). Rides along
    with M's evaluation (`SidePass`), so one engine start serves both."""

    def __init__(self, cfg: R1VConfig, train_uri: str):
        self.cfg, self.train_uri = cfg, train_uri
        self.wrong: list[str] = []
        self.rejected: list[dict] = []
        self.generated = 0

    def side_pass(self) -> SidePass:
        return SidePass(self.train_uri, self.build, self.consume)

    def build(self, row: dict):
        return paper_request(row, 1, self.cfg.sft.error_set_max_tokens, 0.0, 1.0, seed=self.cfg.seed)

    def consume(self, row: dict) -> None:
        self.generated += 1
        if row["error"] is not None:
            self.rejected.append(
                {"id": str(row["id"]), "stage": "error_set", "reason": row["error"], "row": None, "image": None}
            )
            return
        if accuracy_reward(row["completions"][0], row["answer"], row_choices(row)) == 0.0:
            self.wrong.append(str(row["id"]))

    def save(self, out_dir: str) -> None:
        with ParquetSink(store.join(out_dir, "errors_rejected"), schema=REJECTED_SCHEMA) as sink:
            if self.rejected:
                sink.write(rejected_table(self.rejected))
        scored = self.generated - len(self.rejected)
        record = {
            "generated": self.generated,
            "wrong": len(self.wrong),
            "rejected": len(self.rejected),
            "train_accuracy": 1 - len(self.wrong) / max(1, scored),
            "ids": self.wrong,
        }
        store.write_json(store.join(out_dir, ERROR_IDS), record)  # present only when complete


def error_set(out_dir: str, train_uri: str) -> tuple[str, dict]:
    """E_{t-1} as rows of the current training data (re-distilled before this iteration or not: whether an
    answer is right depends on image, question and answer only), written to `out_dir/errors`."""
    record = store.read_json(store.join(out_dir, ERROR_IDS))
    wrong = pc.field("id").isin(pa.array(record.pop("ids"), pa.string()))
    path = store.join(out_dir, "errors")
    Selection(train_uri, [wrong], "E").write(path, row_group_rows=None)  # a streaming scan, ids pushed down
    return path, record


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
    _publish(current, final)
    return {"model": final}, {"table": table_rows, "iterations": iterations, "stage1": m0}
