"""The mlp_init stage (paper 2.1): vision encoder + fresh projector + substitute LLM, trained in
sub-stages (full, curated, CoT) on the canonical data (nothing is distilled before it), then its Pass@1
on the test split: the score re-assembly is compared against."""

from __future__ import annotations

from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.data.select import subset
from r1v_ray.data.sources import dataset_uris
from r1v_ray.eval.evaluate import run_eval
from r1v_ray.model.factory import assemble_initial
from r1v_ray.ray_connect import init_ray
from r1v_ray.sft.training_folder import publish, train
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
    current, sub_stages = init, []
    for sub in cfg.sft.mlp_init_stages:
        rows = subset(train_uri, sub.score_column, sub.min_score, sub.sources)
        summary = train(cfg, run, sub.name, current, rows, sub.learning_rate, cfg.model.trainable_prefixes, sub.epochs)
        sub_stages.append({"name": sub.name, "subset": rows.description, **summary})
        current = summary["model"]
    final = run.path_for("model")
    publish(current, final)
    metrics: dict = {"sub_stages": sub_stages}
    if test_uri is not None:
        report = run_eval(cfg, final, test_uri, run.path_for("eval"), "MLP-init")
        metrics["eval_pass1"] = report["overall"]["pass@1_mean"]
    return {"model": final}, metrics
