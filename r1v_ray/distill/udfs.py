"""Ray Data callables of the distillation and scoring stages: judge pools and the self-distiller.

Each takes a pyarrow batch and returns it with new columns plus `error` (None, or
why the row cannot go on) and the judge usage of each row, so the driver can
route rows to the output or to `rejected` and count calls, cache hits, retries
and tokens without any shared state between actors.
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from r1v_ray.config import DistillConfig, JudgeConfig, RolloutConfig
from r1v_ray.config_rules import ASSESSMENT_COLUMNS
from r1v_ray.engines.judge import JudgeError, Usage, image_clarity, make_judge, split_think
from r1v_ray.engines.judge.base import RevisionImpossible
from r1v_ray.engines.rollout import GenerationRequest, make_engine
from r1v_ray.engines.rollout.actor import WorkerClient
from r1v_ray.prompts import paper_request

USAGE_COLUMNS = list(Usage().as_dict())
ASSESS_COLUMNS = list(ASSESSMENT_COLUMNS)  # the columns the query assessment adds
DISTILL_COLUMNS = [
    "think",
    "response",
    "correct",
    "revised",
    "generated_tokens",
    "generated_text",
    "think_chars",
    "response_chars",
]


COLUMN_TYPES = {
    "think": pa.string(),
    "response": pa.string(),
    "generated_text": pa.string(),
    "rm_reason": pa.string(),
    "error": pa.string(),
    "correct": pa.bool_(),
    "revised": pa.bool_(),
    "rm_score": pa.int64(),
    "generated_tokens": pa.int64(),
    "think_chars": pa.int64(),
    "response_chars": pa.int64(),
}


def is_judge_failure(exc: BaseException) -> bool:
    """The judge itself failed (retries exhausted, quota, bad key, unusable answers), not the row."""
    if isinstance(exc, RevisionImpossible):
        return False
    return isinstance(exc, JudgeError) or type(exc).__module__.split(".")[0] == "openai"


def batch_rows(batch: pa.Table) -> list[dict]:
    return batch.to_pylist()


def with_columns(batch: pa.Table, columns: dict[str, list]) -> pa.Table:
    """`batch` plus the new columns, typed explicitly so every batch has one schema even when all are null."""
    for name, values in columns.items():
        kind = COLUMN_TYPES.get(name, pa.int64() if name.startswith("judge_") else pa.float64())
        if name in batch.column_names:
            batch = batch.drop_columns([name])
        batch = batch.append_column(pa.field(name, kind), pa.array(values, type=kind))
    return batch


class _JudgePool:
    """Common part of the judge-only stages: one judge per actor, rows of a batch judged concurrently."""

    def __init__(self, judge_cfg: JudgeConfig, cache_dir: str | None, num_actors: int, api_key: str | None = None):
        share = 1.0 / max(1, num_actors)
        self.judge = make_judge(judge_cfg, cache_dir, share, api_key)
        threads = 1 if judge_cfg.kind == "offline" else max(1, int(judge_cfg.max_concurrency * share))
        self.pool = ThreadPoolExecutor(max_workers=threads)

    columns: list[str] = []  # every batch carries all of them (None for rejected rows): one schema

    def judge_row(self, row: dict) -> tuple[dict, Usage]:
        raise NotImplementedError

    def _safe(self, row: dict) -> tuple[dict, Usage, str | None]:
        try:
            values, usage = self.judge_row(row)
            return values, usage, None
        except Exception as exc:  # a row the judge cannot handle is rejected with the reason, never dropped
            usage = copy.copy(getattr(exc, "usage", None) or Usage())
            usage.failures += int(is_judge_failure(exc))
            return {}, usage, f"judge: {type(exc).__name__}: {exc}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self._assemble(batch, list(self.pool.map(self._safe, batch_rows(batch))))

    def _assemble(self, batch: pa.Table, results: list[tuple[dict, Usage, str | None]]) -> pa.Table:
        columns = {name: [values.get(name) for values, _, _ in results] for name in self.columns}
        columns.update({k: [usage.as_dict()[k] for _, usage, _ in results] for k in USAGE_COLUMNS})
        columns["error"] = [err for _, _, err in results]
        return with_columns(batch, columns)


class Assess(_JudgePool):
    """QDAM (S_v from local clarity and judged necessity; S_t) and VTIA (S_I), raw, before normalization."""

    columns = ASSESS_COLUMNS

    def judge_row(self, row: dict) -> tuple[dict, Usage]:
        clarity = image_clarity(row["image"])
        a, usage = self.judge.assess(row)
        values = {
            "clarity": clarity,
            "image_necessity": a.image_necessity,
            "question_quality": a.question_quality,
            "difficulty": a.difficulty,
            "reasoning_demand": a.reasoning_demand,
            "integration": a.integration,
            "s_v_raw": (clarity + a.image_necessity) / 2,
            "s_t_raw": (a.question_quality + a.difficulty + a.reasoning_demand) / 3,
            "s_i_raw": a.integration,
        }
        return values, usage


class RMScore(_JudgePool):
    """RM(x) in {0..5} for each sample (paper 2.2)."""

    columns = ["rm_score", "rm_reason"]

    def judge_row(self, row: dict) -> tuple[dict, Usage]:
        score, reason, usage = self.judge.rm_score(row)
        return {"rm_score": int(score), "rm_reason": reason}, usage


def distill_request(row: dict, cfg: DistillConfig, seed: int, hint: str | None = None) -> GenerationRequest:
    """The self-distillation prompt with the row's own DRLC repetition penalty."""
    penalty = float(row["rep_penalty"])
    if not math.isfinite(penalty) or penalty <= 0:
        raise ValueError(f"rep_penalty={penalty!r} must be a positive number")
    return paper_request(row, 1, cfg.max_tokens, cfg.temperature, 1.0, seed, repetition_penalty=penalty, hint=hint)


class SelfDistill(_JudgePool):
    """Generate with each row's penalty, verify with the judge, revise what is wrong (paper 2.3)."""

    columns = DISTILL_COLUMNS

    def __init__(
        self,
        checkpoint: str,
        rollout: RolloutConfig,
        dtype: str,
        judge_cfg: JudgeConfig,
        cache_dir: str | None,
        num_actors: int,
        distill: DistillConfig,
        seed: int,
        api_key: str | None = None,
        workers: list | None = None,
    ):
        super().__init__(judge_cfg, cache_dir, num_actors, api_key)
        # With `workers`: running rollout workers that hold `checkpoint` generate; no engine of its own.
        self.engine = WorkerClient(workers) if workers else make_engine(checkpoint, rollout, dtype)
        self.cfg, self.seed = distill, seed

    def _generate(self, rows: list[dict], hint: bool) -> list[tuple[str | None, int, str | None]]:
        """Batched generation: (text, tokens, error) for each row, in row order (never joined by id)."""
        out: list = [None] * len(rows)
        requests, where = [], []
        for i, row in enumerate(rows):
            try:
                answer_hint = f"the correct answer is {row['answer']}." if hint else None
                requests.append(distill_request(row, self.cfg, self.seed, hint=answer_hint))
                where.append(i)
            except Exception as exc:
                out[i] = (None, 0, f"bad request: {exc}")
        for i, res in zip(where, self.engine.generate(requests)):
            c = res.completions[0] if res.ok else None
            out[i] = (None, 0, res.error) if c is None else (c.text, len(c.token_ids), None)
        return out

    def judge_row(self, item: tuple) -> tuple[dict, Usage]:
        row, (text, n_tokens, _), hinted = item
        correct, usage = self.judge.verify(row, text)
        final = text
        if not correct:
            try:
                final, more = self.judge.revise(row, text, lambda r: hinted or "")
            except JudgeError as exc:  # the rejected row still paid for its verification
                exc.usage += usage
                raise
            usage += more
        think, response = split_think(final)
        return {
            "think": think,
            "response": response,
            "correct": bool(correct),
            "revised": not correct,
            "generated_tokens": n_tokens,
            "generated_text": text,
            "think_chars": len(think),
            "response_chars": len(response),
        }, usage

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch_rows(batch)
        generated = self._generate(rows, hint=False)
        hinted: list[str | None] = [None] * len(rows)
        if self.judge.uses_regeneration:  # one batched hinted pass for the wrong rows
            wrong = [
                i for i, (r, g) in enumerate(zip(rows, generated)) if not g[2] and not self.judge.verify(r, g[0])[0]
            ]
            for i, (text, _, err) in zip(wrong, self._generate([rows[i] for i in wrong], hint=True)):
                hinted[i] = None if err else text
        ok = [i for i, g in enumerate(generated) if not g[2]]
        judged = dict(zip(ok, self.pool.map(self._safe, [(rows[i], generated[i], hinted[i]) for i in ok])))
        return self._assemble(
            batch, [judged.get(i) or ({}, Usage(), f"generation: {generated[i][2]}") for i in range(len(rows))]
        )
