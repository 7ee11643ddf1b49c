"""The paper's stages, one module each (`r1v_ray.stages.<name>`), each with one entry point,
`run(cfg, force=False)`, that returns the stage's manifest: its outputs and metrics.

A stage records its manifest in the run directory (`stages.manifest`), skips when complete and
unchanged, resumes otherwise, and takes its inputs from the run directory (`stages.inputs`: the
manifests of the stages before it), never from another stage's module. The order is defined here,
once; the pipeline, the report and the dry-run plan follow it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r1v_ray.config import R1VConfig

# The paper's order (2.1-2.3): the projector is trained against the substitute LLM on the canonical data,
# moved onto the reasoning LLM, and the re-assembled model distills its own chains before Stage 1; sft
# re-distills with M_{t-1} before each iteration.
STAGES: tuple[str, ...] = ("mlp_init", "reassemble", "distill", "score", "sft", "grpo")


def entry_point(stage: str) -> Callable[[R1VConfig, bool], dict]:
    """`run(cfg, force)` of the stage's module (imported when asked for: stages pull in Ray, torch, vLLM)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return importlib.import_module(f"r1v_ray.stages.{stage}").run


def run_pipeline(cfg: R1VConfig, force: list[str] = (), only: list[str] | None = None, log=print) -> list[dict]:
    """Every stage in order (or those in `only`); finished ones skip, unfinished ones resume."""
    from r1v_ray.run_dir import RunLayout

    unknown = sorted((set(force) | set(only or ())) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    manifests = []
    for name in STAGES:
        if only and name not in only:
            continue
        start = time.time()
        log(f"[pipeline] {name} ...")
        manifest = entry_point(name)(cfg, name in force)
        log(
            f"[pipeline] {name}: {manifest['status']} ({time.time() - start:.0f} s; manifest "
            f"{RunLayout(cfg.run_dir).manifest(name)})"
        )
        manifests.append(manifest)
    return manifests
