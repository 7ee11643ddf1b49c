"""The evaluation stage: a checkpoint on a canonical benchmark, through the rollout engine on Ray Data."""

from __future__ import annotations

import json
import os
import time

import ray

from r1v_ray.config import R1VConfig
from r1v_ray.data.io import ParquetSink, makedirs, write_text
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.engines.rollout.actor import generate_dataset
from r1v_ray.eval.scoring import eval_request, markdown_table, score_rows


def run_eval(cfg: R1VConfig, checkpoint: str, data_uri: str, out_dir: str, name: str = "eval") -> dict:
    """Generate k runs per row, score Pass@1, write eval.json, eval.md and rejected rows to `out_dir`."""
    e = cfg.eval
    start = time.time()
    ds = ray.data.read_parquet(data_uri)

    def build(row: dict):
        return eval_request(row, e.runs, e.max_tokens, e.temperature, e.top_p, seed=cfg.seed)

    rollout = cfg.rollout
    if rollout.max_model_len <= e.max_tokens:
        raise ValueError(
            f"eval.max_tokens={e.max_tokens} leaves no room for the prompt in rollout.max_model_len="
            f"{rollout.max_model_len}; raise rollout.max_model_len or lower eval.max_tokens"
        )
    out = generate_dataset(ds.select_columns(["id", "image", "question", "choices", "answer", "source", "category"]),
                           checkpoint, rollout, build, dtype=cfg.model.dtype)
    scored, rejected, lengths = [], [], []
    for row in out.drop_columns(["image"]).iter_rows():  # streams; images are not kept
        if row["error"] is not None:
            rejected.append({"id": str(row["id"]), "stage": name, "reason": row["error"], "row": None, "image": None})
            continue
        scored.append({k: row[k] for k in ("id", "answer", "choices", "category", "source", "completions")})
        lengths.extend(row["completion_tokens"])
    report = score_rows(scored, e.runs)
    report.update(
        checkpoint=checkpoint, data=data_uri, runs=e.runs, max_tokens=e.max_tokens, temperature=e.temperature,
        top_p=e.top_p, rejected=len(rejected), scored=len(scored), wall_s=round(time.time() - start, 2),
        mean_completion_tokens=round(sum(lengths) / max(1, len(lengths)), 2),
    )
    makedirs(out_dir)
    write_text(os.path.join(out_dir, "eval.json"), json.dumps(report, indent=2))
    write_text(os.path.join(out_dir, "eval.md"), markdown_table(report, f"{name}: {os.path.basename(checkpoint.rstrip('/'))}"))
    with ParquetSink(os.path.join(out_dir, "rejected"), schema=REJECTED_SCHEMA) as sink:
        if rejected:
            sink.write(rejected_table(rejected))
    return report
