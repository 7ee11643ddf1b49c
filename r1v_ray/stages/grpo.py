"""The grpo stage (paper 2.2, stage 3): GRPO from the iterative-SFT model on D_rm(grpo.tau), then the
Pass@1 evaluation every SFT model gets, so GRPO has its row in the stage table."""

from __future__ import annotations

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.ray_connect import init_ray
from r1v_ray.stages.inputs import training_inputs
from r1v_ray.stages.manifest import StageRun, run_stage


def run(cfg: R1VConfig, force: bool = False) -> dict:
    init_ray()
    inputs = training_inputs(cfg, "grpo", model_from="sft", model_key="sft")
    base, train_uri, test_uri = inputs["sft"], inputs["train"], inputs["test"]
    return run_stage(cfg, "grpo", lambda run: body(cfg, run, base, train_uri, test_uri), inputs, force)


def body(cfg: R1VConfig, run: StageRun, base: str, train_uri: str, test_uri: str) -> tuple[dict, dict]:
    from r1v_ray.data.io import count_rows
    from r1v_ray.data.select import d_rm
    from r1v_ray.eval.evaluate import run_eval
    from r1v_ray.eval.table import stage_entry
    from r1v_ray.grpo.trainer import GRPORun

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
        # The rollout workers hold the final weights (synced after the last update): they evaluate them.
        workers = trainer.topology.rollout_workers
        report = run_eval(cfg, result["model"], test_uri, run.path_for("eval"), "GRPO", workers=workers)
    finally:
        trainer.shutdown()
    last_sft = (StageRun(cfg, "sft").manifest.get("metrics", {}).get("table") or [None])[-1]
    return {"model": result["model"]}, {
        "heldout": result["heldout"],
        "d_rm": selection.description,
        "rows": rows,
        "eval_pass1": report["overall"]["pass@1_mean"],
        "eval": stage_entry("GRPO", run.path_for("eval"), last_sft),  # mean ± std, CI against M_T
    }
