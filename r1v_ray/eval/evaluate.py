"""Evaluating a checkpoint (`run_eval`): Pass@1 on a canonical benchmark, through the rollout engine on Ray Data."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import ray

from r1v_ray.atomic import write_text_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import ParquetSink, makedirs, remove
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.engines.rollout import GenerationRequest
from r1v_ray.engines.rollout.actor import generate_dataset
from r1v_ray.eval.scoring import markdown_table, score_rows
from r1v_ray.eval.table import EVAL_JSON, PER_ROW, per_row_text
from r1v_ray.prompts import paper_request

EVAL_COLUMNS = ["id", "image", "question", "choices", "answer", "source", "category"]
PASS = "_pass"  # which pass a row belongs to when an evaluation carries a side pass


@dataclass
class SidePass:
    """More rows to generate in the same engine pass as an evaluation: one engine start serves both.

    `build(row)` makes each row's request; `consume(row)` gets each generated row (without its image) as
    it streams by, with `completions` and `error` as `generate_dataset` gives them.
    """

    data_uri: str
    build: Callable[[dict], GenerationRequest]
    consume: Callable[[dict], None]


def _tagged(uri: str, tag: str) -> ray.data.Dataset:
    def tag_batch(batch: pa.Table) -> pa.Table:
        return batch.append_column(PASS, pa.array([tag] * batch.num_rows, pa.string()))

    return ray.data.read_parquet(uri).select_columns(EVAL_COLUMNS).map_batches(tag_batch, batch_format="pyarrow")


def _write_outputs(out_dir: str, title: str, report: dict, per_row: list[dict], rejected: list[dict]) -> None:
    """rejected/, eval.md, per_row.jsonl, then eval.json: last and whole, its presence means this evaluation
    is complete (iterative SFT resumes on it)."""
    makedirs(out_dir)
    remove(os.path.join(out_dir, "rejected"))  # no part files of an earlier attempt
    with ParquetSink(os.path.join(out_dir, "rejected"), schema=REJECTED_SCHEMA) as sink:
        if rejected:
            sink.write(rejected_table(rejected))
    write_text_atomic(os.path.join(out_dir, "eval.md"), markdown_table(report, title))
    write_text_atomic(os.path.join(out_dir, PER_ROW), per_row_text(per_row))
    write_text_atomic(os.path.join(out_dir, EVAL_JSON), json.dumps(report, indent=2))


def run_eval(
    cfg: R1VConfig,
    checkpoint: str,
    data_uri: str,
    out_dir: str,
    name: str = "eval",
    side: SidePass | None = None,
    workers: list | None = None,
) -> dict:
    """Generate k runs per row, score Pass@1, write eval.json, eval.md, per_row.jsonl and rejected rows to `out_dir`.

    `workers`: running rollout workers that hold `checkpoint`'s weights generate (`generate_dataset`).
    Returns eval.json's report with `per_row` (each row's score in every run; in per_row.jsonl on disk).
    """
    e = cfg.eval
    start = time.time()

    def build(row: dict) -> GenerationRequest:
        if row[PASS] == "side":
            req = side.build(row)
            req.request_id = f"side:{req.request_id}"  # ids of the two datasets may meet in one engine batch
            return req
        return paper_request(row, e.runs, e.max_tokens, e.temperature, e.top_p, seed=cfg.seed)

    rollout = cfg.rollout
    if rollout.max_model_len <= e.max_tokens:
        raise ValueError(
            f"eval.max_tokens={e.max_tokens} leaves no room for the prompt in rollout.max_model_len="
            f"{rollout.max_model_len}; raise rollout.max_model_len or lower eval.max_tokens"
        )
    ds = _tagged(data_uri, "eval")
    if side is not None:
        ds = ds.union(_tagged(side.data_uri, "side"))
    out = generate_dataset(ds, checkpoint, rollout, build, dtype=cfg.model.dtype, workers=workers)
    scored, rejected, lengths = [], [], []
    for row in out.drop_columns(["image"]).iter_rows():  # streams; images are not kept
        row = dict(row)
        if row.pop(PASS) == "side":
            side.consume(row)
        else:  # a rejected row is scored too: wrong in every run
            scored.append({k: row[k] for k in ("id", "answer", "choices", "category", "source", "completions")})
            scored[-1]["error"] = row["error"]
            if row["error"] is not None:
                rejected.append(
                    {"id": str(row["id"]), "stage": name, "reason": row["error"], "row": None, "image": None}
                )
            else:
                lengths.extend(row["completion_tokens"])
    report = score_rows(scored, e.runs)
    per_row = report.pop("per_row")  # its own file: eval.json stays a short summary
    report.update(
        checkpoint=checkpoint,
        data=data_uri,
        runs=e.runs,
        max_tokens=e.max_tokens,
        temperature=e.temperature,
        top_p=e.top_p,
        rejected=len(rejected),
        scored=len(scored) - len(rejected),
        wall_s=round(time.time() - start, 2),
        mean_completion_tokens=round(sum(lengths) / max(1, len(lengths)), 2),
    )
    _write_outputs(out_dir, f"{name}: {os.path.basename(checkpoint.rstrip('/'))}", report, per_row, rejected)
    return {**report, "per_row": per_row}
