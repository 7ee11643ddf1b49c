"""The reassemble stage (paper 2.1): the MLP-initialized projector onto the reasoning LLM (image tokens
added to its tokenizer); one process on the driver."""

from __future__ import annotations

from r1v_ray.config import R1VConfig
from r1v_ray.data import synthetic
from r1v_ray.model.assemble import read_meta
from r1v_ray.model.factory import part_paths
from r1v_ray.stages.inputs import stage_output
from r1v_ray.stages.manifest import StageRun, run_stage


def run(cfg: R1VConfig, force: bool = False) -> dict:
    source = stage_output(cfg, "mlp_init")
    return run_stage(cfg, "reassemble", lambda run: body(cfg, run, source), {"mlp_init": source}, force)


def body(cfg: R1VConfig, run: StageRun, mlp_init_model: str) -> tuple[dict, dict]:
    from r1v_ray.model.reassemble import reassemble_checkpoint

    parts = part_paths(cfg.model, cfg.run_dir, synthetic.corpus, synthetic)
    lineage = dict(projector_from=mlp_init_model, projector_lineage=read_meta(mlp_init_model), llm=parts.reasoning_llm)
    final = run.path_for("model")
    meta = {"stage": "reassemble", **lineage}
    record = reassemble_checkpoint(
        mlp_init_model, parts.reasoning_llm, final, cfg.model.max_image_tiles, meta, cfg.seed
    )
    return {"model": final}, {**record, **lineage}
