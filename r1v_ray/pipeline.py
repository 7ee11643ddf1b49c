"""The paper's stages in order, each a function a job script (or the pipeline) calls.

mlp_init -> reassemble -> distill -> score -> sft -> grpo (paper 2.1-2.3): the projector is trained
against the substitute LLM on the canonical data, moved onto the reasoning LLM, and the re-assembled
model distills its own chains before Stage 1; sft re-distills with M_{t-1} before each iteration. Each
stage records a manifest in the run directory, skips when complete (unless forced) and resumes
otherwise; its inputs are the outputs of the stages before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.sources import dataset_uris
from r1v_ray.run_dir import RunLayout
from r1v_ray.runs import StageRun, run_stage
from r1v_ray.runtime import init_ray, stage_output


def distill_job(cfg: R1VConfig, force: bool = False) -> dict:
    from r1v_ray.distill.recipes import distill_stage, generation_model

    init_ray()
    train_uri, _ = dataset_uris(cfg)
    model = generation_model(cfg, reuse_finished=not force)
    return run_stage(
        cfg,
        "distill",
        lambda run: distill_stage(cfg, run, model, train_uri),
        {"train": train_uri, "model": model},
        force,
    )


def score_job(cfg: R1VConfig, force: bool = False, data: str | None = None) -> dict:
    from r1v_ray.distill.recipes import score_stage, training_data

    init_ray()
    distilled = StageRun(cfg, "distill")
    data = data or (distilled.manifest["outputs"]["data"] if distilled.complete else training_data(cfg))
    return run_stage(cfg, "score", lambda run: score_stage(cfg, run, data), {"data": data}, force)


def mlp_init_job(cfg: R1VConfig, force: bool = False) -> dict:
    from r1v_ray.sft.stages import mlp_init

    init_ray()
    train_uri, test_uri = dataset_uris(cfg)  # the canonical data: nothing is distilled before MLP-init
    return run_stage(cfg, "mlp_init", lambda run: mlp_init(cfg, run, train_uri, test_uri), {"train": train_uri}, force)


def reassemble_job(cfg: R1VConfig, force: bool = False) -> dict:
    from r1v_ray.sft.stages import reassemble_stage

    source = stage_output(cfg, "mlp_init")
    return run_stage(cfg, "reassemble", lambda run: reassemble_stage(cfg, run, source), {"mlp_init": source}, force)


def sft_job(cfg: R1VConfig, force: bool = False) -> dict:
    from r1v_ray.distill.recipes import redistill_hook, training_data
    from r1v_ray.sft.stages import iterative_sft

    init_ray()
    base = stage_output(cfg, "reassemble")
    _, test_uri = dataset_uris(cfg)
    train_uri = training_data(cfg)
    return run_stage(
        cfg,
        "sft",
        lambda run: iterative_sft(cfg, run, base, train_uri, test_uri, redistill_hook(cfg, run)),
        {"reassembled": base, "train": train_uri, "test": test_uri},
        force,
    )


def grpo_job(cfg: R1VConfig, force: bool = False) -> dict:
    from r1v_ray.data.io import count_rows
    from r1v_ray.data.select import d_rm
    from r1v_ray.distill.recipes import training_data
    from r1v_ray.eval.stage import run_eval
    from r1v_ray.eval.table import stage_entry
    from r1v_ray.grpo.trainer import GRPORun

    init_ray()
    base = stage_output(cfg, "sft")
    _, test_uri = dataset_uris(cfg)
    train_uri = training_data(cfg)

    def body(run: StageRun):
        selection = d_rm(train_uri, cfg.sft.rm_score_column, cfg.grpo.tau)
        data = run.path_for("data")  # D_rm(tau) written once (a streaming scan), then read a step at a time
        store.write_dir_once(data, selection.write)  # a resumed run trains on the same prompt set
        rows = count_rows(data)
        if rows == 0:
            raise ValueError(
                f"GRPO's D_rm(tau={cfg.grpo.tau}) is empty: no row of {train_uri} has {selection.description}; "
                "lower grpo.tau or check the score stage's RM scores"
            )
        trainer = GRPORun(cfg, base, data, test_uri, run.dir)
        try:
            result = trainer.run()
        finally:
            trainer.shutdown()
        # The same Pass@1 evaluation as every SFT model, so GRPO gets its row in the stage table.
        report = run_eval(cfg, result["model"], test_uri, run.path_for("eval"), "GRPO")
        last_sft = (StageRun(cfg, "sft").manifest.get("metrics", {}).get("table") or [None])[-1]
        return {"model": result["model"]}, {
            "heldout": result["heldout"],
            "d_rm": selection.description,
            "rows": rows,
            "eval_pass1": report["overall"]["pass@1_mean"],
            "eval": stage_entry("GRPO", run.path_for("eval"), last_sft),  # mean ± std, CI against M_T
        }

    return run_stage(cfg, "grpo", body, {"sft": base, "train": train_uri, "test": test_uri}, force)


PIPELINE: list[tuple[str, Callable[[R1VConfig, bool], dict]]] = [
    ("mlp_init", mlp_init_job),
    ("reassemble", reassemble_job),
    ("distill", distill_job),  # self-distillation: generation_model() is then the re-assembled model
    ("score", score_job),
    ("sft", sft_job),
    ("grpo", grpo_job),
]
STAGES = [name for name, _ in PIPELINE]


def run_pipeline(cfg: R1VConfig, force: list[str] = (), only: list[str] | None = None, log=print) -> list[dict]:
    """Every stage in order (or those in `only`); finished ones skip, unfinished ones resume."""
    unknown = sorted((set(force) | set(only or ())) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    manifests = []
    for name, job in PIPELINE:
        if only and name not in only:
            continue
        start = time.time()
        log(f"[pipeline] {name} ...")
        manifest = job(cfg, name in force)
        log(
            f"[pipeline] {name}: {manifest['status']} ({time.time() - start:.0f} s; manifest "
            f"{RunLayout(cfg.run_dir).manifest(name)})"
        )
        manifests.append(manifest)
    return manifests
