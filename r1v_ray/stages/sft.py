"""The sft stage (paper 2.2): stage 1 on D gives M0; then M_t from M_{t-1} on D_rm(tau_t) ∪ E_{t-1},
each M_t evaluated (Pass@1 on the test split). With distill.before_iterations, the data is re-distilled
with M_{t-1} and re-scored before iteration t (`stages.redistill`).

A finished training run (its `model/`) is never redone; an unfinished one resumes from its Ray Train
checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from contextlib import nullcontext
from typing import TypeVar

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import read_parquet
from r1v_ray.data.select import all_rows, d_rm, with_errors
from r1v_ray.engines.rollout.actor import HeldWorkers
from r1v_ray.eval.evaluate import run_eval
from r1v_ray.eval.table import stage_entry
from r1v_ray.ray_connect import init_ray
from r1v_ray.run_dir import ERROR_IDS, EVAL_JSON
from r1v_ray.sft.error_set import ErrorSetPass, error_set
from r1v_ray.sft.training_folder import publish, train
from r1v_ray.stages.inputs import training_inputs
from r1v_ray.stages.manifest import StageRun, run_stage
from r1v_ray.stages.redistill import redistill_hook

T = TypeVar("T")


def run(cfg: R1VConfig, force: bool = False) -> dict:
    init_ray()
    inputs = training_inputs(cfg, "sft", model_from="reassemble", model_key="reassembled")

    def body(run: StageRun) -> tuple[dict, dict]:
        hook = redistill_hook(cfg, run)
        return iterative_sft(cfg, run, inputs["reassembled"], inputs["train"], inputs["test"], hook)

    return run_stage(cfg, "sft", body, inputs, force)


class _Evaluations:
    """Each model's Pass@1 on the test split, as the stage table recorded in the manifest while it runs.
    With `engines`, the stage's held rollout workers generate (`HeldWorkers.serving`)."""

    def __init__(self, cfg: R1VConfig, run: StageRun, test_uri: str, engines: HeldWorkers | None = None):
        self.cfg, self.run, self.test_uri, self.engines = cfg, run, test_uri, engines
        self.table: list[dict] = []

    def workers(self, model: str) -> list | None:
        return self.engines.serving(model) if self.engines else None

    def add(self, name: str, model: str, data_uri: str, errors_for: str | None = None) -> None:
        """Evaluate `model` (once: a finished evaluation is kept); with `errors_for`, the same engine pass
        generates over the training rows for that iteration's error set."""
        run = self.run
        path = run.path_for("eval", name, EVAL_JSON)
        if not store.is_file(path) or not self._errors_done(errors_for):
            errors = ErrorSetPass(self.cfg, data_uri) if errors_for else None
            side = errors.side_pass() if errors else None
            run_eval(self.cfg, model, self.test_uri, store.dirname(path), name, side, workers=self.workers(model))
            if errors:
                errors.save(run.path_for(errors_for))
        self.table.append(stage_entry(name, store.dirname(path), self.table[-1] if self.table else None))
        run.record(table=self.table)

    def errors(self, model: str, data_uri: str, errors_for: str) -> None:
        """The error set's pass on its own, on the held workers (once: finished ids are kept)."""
        if not self._errors_done(errors_for):
            errors = ErrorSetPass(self.cfg, data_uri)
            errors.generate(model, self.workers(model))
            errors.save(self.run.path_for(errors_for))

    def _errors_done(self, errors_for: str | None) -> bool:
        return errors_for is None or store.is_file(self.run.path_for(errors_for, ERROR_IDS))


def _iteration(cfg: R1VConfig, run: StageRun, t: int, current: str, train_uri: str, prefixes: list[str]) -> dict:
    """M_t from M_{t-1} (`current`) on D_rm(tau_t) ∪ E_{t-1}."""
    s, name = cfg.sft, f"M{t}"
    errors_uri, err_stats = error_set(run.path_for(name), train_uri)
    d = d_rm(train_uri, s.rm_score_column, s.taus[t - 1])
    wrong_ids = read_parquet(errors_uri, columns=["id"]).column("id").to_pylist()  # E: the one set held whole
    summary = train(cfg, run, name, current, with_errors(d, wrong_ids), s.iteration_lrs[t - 1], prefixes, s.epochs)
    return {
        "t": t,
        "tau": s.taus[t - 1],
        "d_rm": d.description,
        "d_rm_rows": d.count(),
        "error_set": err_stats,
        **summary,
    }


def iterative_sft(
    cfg: R1VConfig,
    run: StageRun,
    base_model: str,
    train_uri: str,
    test_uri: str,
    before_iteration: Callable[..., str] | None = None,
) -> tuple[dict, dict]:
    """The stage's body: M0, then M1..MT, each evaluated.

    `before_iteration(t, model, engines)` may return a new train_uri (re-distilled data) before iteration t;
    `engines`: the stage's `HeldWorkers` with sft.keep_rollout_engines, else None.
    """
    s = cfg.sft
    if len(s.taus) < s.iterations or len(s.iteration_lrs) < s.iterations:
        raise ValueError(f"sft.taus and sft.iteration_lrs need {s.iterations} entries (sft.iterations)")
    with HeldWorkers(cfg.rollout, cfg.model.dtype, "sft-rollout") if s.keep_rollout_engines else nullcontext() as held:
        evals = _Evaluations(cfg, run, test_uri, held)
        table, iterations, m0 = _models(cfg, run, evals, base_model, train_uri, before_iteration)
    metrics = {"table": table, "iterations": iterations, "stage1": m0}
    if held is not None:  # how the held engines got each model: started, or weights loaded in place
        metrics["engine_loads"] = held.loads
    return {"model": run.path_for("model")}, metrics


def _alongside(background: Callable[[], object] | None, work: Callable[[], T]) -> T:
    """`work()` in this thread while `background()` runs in another; both have finished on return."""
    if background is None:
        return work()
    with futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sft-eval") as pool:
        done = pool.submit(background)
        out = work()
        done.result()
    return out


def _models(
    cfg: R1VConfig,
    run: StageRun,
    evals: _Evaluations,
    base_model: str,
    train_uri: str,
    before_iteration: Callable[..., str] | None,
) -> tuple[list[dict], list[dict], dict]:
    s = cfg.sft
    prefixes = s.trainable_prefixes or cfg.model.trainable_prefixes
    # A model's test score is generated while the next model trains: the re-assembled model's during M0's
    # training, and with held workers M_{t-1}'s during M_t's (the table gets its rows in order all the same).
    epochs = s.stage1_epochs or s.epochs
    m0 = _alongside(
        lambda: evals.add("reassembled", base_model, train_uri),
        lambda: train(cfg, run, "M0", base_model, all_rows(train_uri), s.stage1_learning_rate, prefixes, epochs),
    )
    current, iterations = m0["model"], []
    for t in range(1, s.iterations + 1):
        # With held workers M_{t-1}'s error set goes first, in a pass of its own; without, one engine start
        # serves both passes.
        apart = evals.engines is not None
        if apart:
            evals.errors(current, train_uri, errors_for=f"M{t}")
        else:
            evals.add(f"M{t - 1}", current, train_uri, errors_for=f"M{t}")
        if before_iteration is not None:
            train_uri = before_iteration(t, current, evals.engines)
        iterations.append(
            _alongside(
                (lambda: evals.add(f"M{t - 1}", current, train_uri)) if apart else None,
                lambda: _iteration(cfg, run, t, current, train_uri, prefixes),
            )
        )
        current = iterations[-1]["model"]
    evals.add(f"M{s.iterations}", current, train_uri)
    publish(current, run.path_for("model"))
    return evals.table, iterations, m0
