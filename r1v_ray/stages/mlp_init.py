"""The mlp_init stage (paper 2.1): vision encoder + fresh projector + substitute LLM, trained in
sub-stages (full, curated, CoT) on the canonical data (nothing is distilled before it), then its Pass@1
on the test split: the score re-assembly is compared against.

A sub-stage that picks its subset by score uses the judge's query assessment (QDAM S_v, S_t; VTIA S_I:
the `s_*_raw` columns), run first on the canonical data; no RM score exists yet at this point of the
paper's order. Distillation's own first pass later asks the judge the same questions (its cache answers).
"""

from __future__ import annotations

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.select import subset
from r1v_ray.data.sources import dataset_uris
from r1v_ray.eval.evaluate import run_eval
from r1v_ray.model.factory import assemble_initial
from r1v_ray.ray_connect import init_ray
from r1v_ray.run_dir import TRAIN_MODEL
from r1v_ray.sft.training_folder import TrainingRun, publish, train_chain
from r1v_ray.stages.inputs import training_data
from r1v_ray.stages.manifest import StageRun, run_stage


def run(cfg: R1VConfig, force: bool = False) -> dict:
    init_ray()
    train_uri = training_data(cfg, "mlp_init")  # the canonical data: no stage before this one writes data
    _, test_uri = dataset_uris(cfg)
    return run_stage(cfg, "mlp_init", lambda run: body(cfg, run, train_uri, test_uri), {"train": train_uri}, force)


def body(cfg: R1VConfig, run: StageRun, train_uri: str, test_uri: str | None = None) -> tuple[dict, dict]:
    init = assemble_initial(
        cfg.model, cfg.run_dir, run.path_for("assembled"), seed=cfg.seed, corpus=synthetic.corpus, task=synthetic
    )
    metrics: dict = {}
    scored = train_uri
    if any(sub.score_column for sub in cfg.sft.mlp_init_stages):
        scored, metrics["assess"] = _assessed(cfg, run, train_uri)
    runs, current = [], init
    for sub in cfg.sft.mlp_init_stages:  # each sub-stage starts from the one before's model
        rows = subset(scored if sub.score_column else train_uri, sub.score_column, sub.min_score, sub.sources)
        runs.append(TrainingRun(sub.name, current, rows, sub.learning_rate, cfg.model.trainable_prefixes, sub.epochs))
        current = store.join(run.path_for(sub.name), TRAIN_MODEL)
    summaries = train_chain(cfg, run, runs)  # one Ray Train run for all sub-stages
    sub_stages = [{"name": r.name, "subset": r.selection.description, **x} for r, x in zip(runs, summaries)]
    final = run.path_for("model")
    publish(summaries[-1]["model"], final)
    metrics["sub_stages"] = sub_stages
    if test_uri is not None:
        report = run_eval(cfg, final, test_uri, run.path_for("eval"), "MLP-init")
        metrics["eval_pass1"] = report["overall"]["pass@1_mean"]
    return {"model": final}, metrics


def _assessed(cfg: R1VConfig, run: StageRun, train_uri: str) -> tuple[str, dict]:
    """The canonical rows with the judge's query assessment (done once; a resumed stage reads it back)."""
    import ray

    from r1v_ray.distill.dataflow import assess

    out = run.path_for("assess")
    pass1 = assess(cfg, ray.data.read_parquet(train_uri), out, stage="mlp_init")
    return store.join(out, "assessed"), {k: pass1[k] for k in ("rows_in", "rows_out", "rejected") if k in pass1}
