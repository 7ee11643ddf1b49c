"""Distillation (paper 2.3) and RM scoring (paper 2.2) as streaming Ray Data pipelines: what the distill
and score stages (and re-distillation before an SFT iteration) run.

Distillation runs two passes. Pass 1 scores every query (QDAM: S_v, S_t;
VTIA: S_I) and writes them with the rows, keeping running minima and maxima;
pass 2 min-max normalizes, turns the scores into each row's repetition penalty
(DRLC, eq. 1), generates with it, verifies and revises. Scoring adds RM(x) in
{0..5}. The driver streams results batch by batch into Parquet, so memory stays
bounded however large the input; every row ends in the output or in `rejected`.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from r1v_ray import store
from r1v_ray.atomic import write_json_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import ParquetSink, remove
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.data.validate import UniqueIds
from r1v_ray.distill.drlc import repetition_penalty
from r1v_ray.distill.udfs import USAGE_COLUMNS, Assess, RMScore, SelfDistill
from r1v_ray.engines.judge import judge_api_key
from r1v_ray.engines.rollout.actor import pool_options
from r1v_ray.metrics import StageMetrics
from r1v_ray.run_dir import BOUNDS, METRICS, RunLayout

SCORES = ("s_v", "s_t", "s_i")


def judge_cache_dir(cfg: R1VConfig) -> str:
    return RunLayout(cfg.run_dir).judge_cache(cfg.judge.cache_dir)


class Tally:
    """Counts of one streamed pass, with the judge usage summed from the rows' usage columns."""

    def __init__(self, stage: str, metrics: StageMetrics, usd_in: float, usd_out: float):
        self.stage, self.metrics, self.usd_in, self.usd_out = stage, metrics, usd_in, usd_out
        self.rows_in = self.rows_out = self.rejected = 0
        self.usage = dict.fromkeys(USAGE_COLUMNS, 0)
        self.failure_example: str | None = None  # one reason of a row the judge failed on
        self.start = time.time()

    @property
    def cost_usd(self) -> float:
        return (
            self.usage["judge_input_tokens"] * self.usd_in + self.usage["judge_output_tokens"] * self.usd_out
        ) / 1000

    def add(self, table: pa.Table, n_bad: int) -> None:
        self.rows_in += table.num_rows
        self.rows_out += table.num_rows - n_bad
        self.rejected += n_bad
        for name in USAGE_COLUMNS:
            self.usage[name] += int(pc.sum(table.column(name)).as_py() or 0)
        if self.failure_example is None and self.usage["judge_failures"]:
            failed = table.filter(pc.greater(table.column("judge_failures"), 0))
            self.failure_example = failed.column("error")[0].as_py() if failed.num_rows else None
        elapsed = max(1e-9, time.time() - self.start)
        self.metrics.log(
            self.rows_in,
            rows=self.rows_in,
            rows_per_s=self.rows_in / elapsed,
            rejected=self.rejected,
            judge_cost_usd=self.cost_usd,
            **self.usage,
        )

    def summary(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "wall_s": round(time.time() - self.start, 2),
            "judge_cost_usd": round(self.cost_usd, 6),
            **self.usage,
        }


class JudgeOutage(RuntimeError):
    """Too many rows of a pass were rejected because the judge failed: the stage fails, to be resumed."""


def check_judge_failures(cfg: R1VConfig, tally: Tally, rejected_uri: str) -> None:
    """Fail the pass when the share of rows the judge failed on exceeds `judge.max_failure_share`."""
    failed, limit = tally.usage["judge_failures"], cfg.judge.max_failure_share
    if not tally.rows_in or failed / tally.rows_in <= limit:
        return
    raise JudgeOutage(
        f"{tally.stage}: the judge failed on {failed} of {tally.rows_in} rows ({failed / tally.rows_in:.1%}), "
        f"more than judge.max_failure_share={limit} (for example {tally.failure_example!r}). The stage is not "
        "marked complete: fix the judge (API key, quota, judge.base_url, judge.max_retries) and run it again. "
        f"Answers already received are kept in the judge cache ({judge_cache_dir(cfg)}) and are not paid for "
        f"twice. This attempt's rejected rows: {rejected_uri}"
    )


def _rejected_rows(bad: pa.Table, stage: str) -> list[dict]:
    rows = []
    for r in bad.to_pylist():
        kept = {k: v for k, v in r.items() if k not in ("image", "error", *USAGE_COLUMNS)}
        rows.append(
            {
                "id": None if r.get("id") is None else str(r["id"]),
                "stage": stage,
                "reason": r["error"],
                "row": json.dumps(kept, default=str),
                "image": r.get("image"),
            }
        )
    return rows


def drain(
    ds: ray.data.Dataset, out_uri: str, rejected_uri: str, tally: Tally, observe=None, batch_size: int = 256
) -> None:
    """Stream `ds` into `out_uri` (rows whose `error` is null) and `rejected_uri` (the others, with reasons).

    Both are rewritten from scratch: a pass that died half-way leaves no stale part files behind.
    A row whose id an earlier row already has is rejected: ids are request ids and join keys downstream.
    """
    remove(out_uri)
    remove(rejected_uri)
    ids = UniqueIds()
    with ParquetSink(out_uri, max_bytes=16 << 20) as out, ParquetSink(rejected_uri, schema=REJECTED_SCHEMA) as rejected:
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=batch_size):
            table = ids.mark(table)
            ok = pc.is_null(table.column("error"))
            good = table.filter(ok).drop_columns(["error", *USAGE_COLUMNS])
            bad = table.filter(pc.invert(ok))
            out.write(good)
            if bad.num_rows:
                rejected.write(rejected_table(_rejected_rows(bad, tally.stage)))
            if observe is not None and good.num_rows:
                observe(good)
            tally.add(table, bad.num_rows)


class MinMax:
    def __init__(self):
        self.lo = {s: math.inf for s in SCORES}
        self.hi = {s: -math.inf for s in SCORES}

    def observe(self, table: pa.Table) -> None:
        for s in SCORES:
            mm = pc.min_max(table.column(f"{s}_raw")).as_py()
            self.lo[s], self.hi[s] = min(self.lo[s], mm["min"]), max(self.hi[s], mm["max"])

    def as_dict(self) -> dict:
        return {s: [self.lo[s], self.hi[s]] for s in SCORES}


def add_penalty(batch: pa.Table, bounds: dict, alpha: float, beta: float, gamma: float) -> pa.Table:
    """Min-max normalized S_v, S_t, S_I (a constant score normalizes to 0.5) and the DRLC penalty."""
    norm = {}
    for s, (lo, hi) in bounds.items():
        raw = batch.column(f"{s}_raw").to_numpy(zero_copy_only=False).astype(np.float64)
        norm[s] = np.clip((raw - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.full_like(raw, 0.5)
        batch = batch.append_column(s, pa.array(norm[s]))
    penalty = [
        repetition_penalty(v, t, i, alpha, beta, gamma) for v, t, i in zip(norm["s_v"], norm["s_t"], norm["s_i"])
    ]
    return batch.append_column("rep_penalty", pa.array(penalty, type=pa.float64()))


class Correlation:
    """Pearson correlation of the penalty with the generated length, accumulated batch by batch."""

    def __init__(self):
        self.n = self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0

    def observe(self, table: pa.Table) -> None:
        x = np.asarray(table.column("rep_penalty").to_pylist(), dtype=np.float64)
        y = np.asarray(table.column("generated_tokens").to_pylist(), dtype=np.float64)
        self.n += len(x)
        self.sx, self.sy = self.sx + x.sum(), self.sy + y.sum()
        self.sxx, self.syy, self.sxy = self.sxx + (x * x).sum(), self.syy + (y * y).sum(), self.sxy + (x * y).sum()

    def value(self) -> float | None:
        if self.n < 2:
            return None
        vx, vy = self.sxx - self.sx**2 / self.n, self.syy - self.sy**2 / self.n
        if vx <= 1e-12 or vy <= 1e-12:
            return None  # a constant penalty or length has no correlation
        return round((self.sxy - self.sx * self.sy / self.n) / math.sqrt(vx * vy), 4)


def judge_stage(ds: ray.data.Dataset, udf: type, cfg: R1VConfig, batch_size: int) -> ray.data.Dataset:
    """`ds` through a pool of judge actors (`Assess` or `RMScore`)."""
    n = cfg.judge.num_workers
    args = (cfg.judge, judge_cache_dir(cfg), n, judge_api_key(cfg.judge))
    return ds.map_batches(
        udf,
        fn_constructor_args=args,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=0.5,
    )


def _tally(cfg: R1VConfig, stage: str, metrics_path: str) -> Tally:
    return Tally(
        stage, StageMetrics(stage, metrics_path), cfg.judge.usd_per_1k_input_tokens, cfg.judge.usd_per_1k_output_tokens
    )


def assess(cfg: R1VConfig, ds: ray.data.Dataset, out_dir: str, stage: str = "distill") -> dict:
    """Pass 1, the model-independent query assessment (QDAM S_v, S_t; VTIA S_I): `assessed/` and
    `rejected_assess/` under `out_dir`, then `bounds.json` (the score bounds, whole and last: it vouches for
    `assessed/`); done once, then read back."""
    bounds_path = store.join(out_dir, BOUNDS)
    if store.is_file(bounds_path):  # pass 1 finished earlier: its output and bounds are complete
        return store.read_json(bounds_path)
    minmax, tally = MinMax(), _tally(cfg, f"{stage}/assess", store.join(out_dir, METRICS))
    rejected_assess = store.join(out_dir, "rejected_assess")
    drain(
        judge_stage(ds, Assess, cfg, cfg.distill.batch_size),
        store.join(out_dir, "assessed"),
        rejected_assess,
        tally,
        observe=minmax.observe,
    )
    check_judge_failures(cfg, tally, rejected_assess)  # before bounds.json: a failed pass 1 is redone
    pass1 = {"bounds": minmax.as_dict(), **tally.summary()}
    write_json_atomic(bounds_path, pass1)
    return pass1


def _generated(
    cfg: R1VConfig, assessed: str, bounds: dict, model: str, workers: list | None = None
) -> ray.data.Dataset:
    """Pass 2's dataset: each row's DRLC penalty from the normalized scores, then generation, verification
    and revision by a pool of engine actors (or of forwarders to running `workers` that hold `model`)."""
    d, rollout = cfg.distill, cfg.rollout
    scored = ray.data.read_parquet(assessed).map_batches(
        add_penalty, fn_kwargs=dict(bounds=bounds, alpha=d.alpha, beta=d.beta, gamma=d.gamma), batch_format="pyarrow"
    )
    return scored.map_batches(
        SelfDistill,
        fn_constructor_args=(
            model,
            rollout,
            cfg.model.dtype,
            cfg.judge,
            judge_cache_dir(cfg),
            rollout.num_workers,
            d,
            cfg.seed,
            judge_api_key(cfg.judge),
            workers,
        ),
        batch_size=d.batch_size,
        batch_format="pyarrow",
        **pool_options(rollout, workers),
    )


def distill(
    cfg: R1VConfig, ds: ray.data.Dataset, model: str, out_dir: str, stage: str = "distill", workers: list | None = None
) -> dict:
    """Both passes over `ds`; writes `assessed/`, `data/`, `rejected_assess/`, `rejected/` under `out_dir`.
    `workers`: running rollout workers that hold `model` generate, instead of a pool of new engines."""
    pass1 = assess(cfg, ds, out_dir, stage)
    if pass1["rows_out"] == 0:
        raise ValueError(f"{stage}: every row was rejected while scoring; see {out_dir}/rejected_assess")
    bounds = {s: tuple(v) for s, v in pass1["bounds"].items()}
    generated = _generated(cfg, store.join(out_dir, "assessed"), bounds, model, workers)
    corr, counts = Correlation(), {"correct": 0, "revised": 0}
    penalty = {"min": math.inf, "max": -math.inf}

    def observe(table: pa.Table) -> None:
        corr.observe(table)
        mm = pc.min_max(table.column("rep_penalty")).as_py()
        penalty.update(min=min(penalty["min"], mm["min"]), max=max(penalty["max"], mm["max"]))
        counts["correct"] += int(pc.sum(table.column("correct").cast(pa.int64())).as_py() or 0)
        counts["revised"] += int(pc.sum(table.column("revised").cast(pa.int64())).as_py() or 0)

    tally = _tally(cfg, f"{stage}/generate", store.join(out_dir, METRICS))
    drain(generated, store.join(out_dir, "data"), store.join(out_dir, "rejected"), tally, observe=observe)
    check_judge_failures(cfg, tally, store.join(out_dir, "rejected"))
    if tally.rows_out == 0:
        raise ValueError(f"{stage}: every row was rejected; see {out_dir}/rejected for the reasons")
    n = max(1, tally.rows_out)
    return {
        "model": model,
        "assess": pass1,
        "generate": tally.summary(),
        "rows_out": tally.rows_out,
        "rejected": pass1["rejected"] + tally.rejected,
        "correct_before_revision": counts["correct"],
        "revised": counts["revised"],
        "self_accuracy": round(counts["correct"] / n, 4),
        "penalty": {**penalty, "mean": round(corr.sx / corr.n, 4)} if corr.n else None,
        "penalty_length_correlation": corr.value(),
        "judge_calls": pass1["judge_calls"] + tally.usage["judge_calls"],
        "judge_cache_hits": pass1["judge_cache_hits"] + tally.usage["judge_cache_hits"],
        "judge_retries": pass1["judge_retries"] + tally.usage["judge_retries"],
        "judge_failures": pass1.get("judge_failures", 0) + tally.usage["judge_failures"],
        "judge_cost_usd": round(pass1["judge_cost_usd"] + tally.cost_usd, 6),
    }


def score(cfg: R1VConfig, ds: ray.data.Dataset, out_dir: str, stage: str = "score") -> dict:
    """RM(x) for every row into `data/` (rejected rows in `rejected/`), with the score histogram."""
    histogram = dict.fromkeys(range(6), 0)

    def observe(table: pa.Table) -> None:
        for value in table.column("rm_score").to_pylist():
            histogram[int(value)] += 1

    tally = _tally(cfg, stage, store.join(out_dir, METRICS))
    rejected = store.join(out_dir, "rejected")
    drain(judge_stage(ds, RMScore, cfg, cfg.distill.batch_size), store.join(out_dir, "data"), rejected, tally, observe)
    check_judge_failures(cfg, tally, rejected)
    if tally.rows_out == 0:  # an empty score set would silently become the training set
        raise ValueError(
            f"{stage}: no rows were scored ({tally.rows_in} in, {tally.rejected} rejected; reasons in {rejected})"
            + ("; its input has no rows" if not tally.rows_in else "")
        )
    return {"histogram": {str(k): v for k, v in histogram.items()}, **tally.summary()}
