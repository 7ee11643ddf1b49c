"""What a stage reads from the run directory: an earlier stage's output, the newest data or model.

Every answer comes from the manifests of finished stages, in the order `STAGES` gives, so a stage
never imports another stage's module to find its inputs.
"""

from __future__ import annotations

from r1v_ray.config import R1VConfig
from r1v_ray.data.sources import dataset_uris
from r1v_ray.stages import STAGES
from r1v_ray.stages.manifest import StageRun


def stage_output(cfg: R1VConfig, stage: str, key: str = "model") -> str:
    """An earlier stage's output, or a clear error naming the job to run first."""
    run = StageRun(cfg, stage)
    if not run.complete:
        raise SystemExit(f"stage '{stage}' has not completed in {cfg.run_dir}; run jobs/{stage}.py first")
    return run.manifest["outputs"][key]


def _newest_output(cfg: R1VConfig, stages, key: str) -> str | None:
    for stage in reversed(stages):
        run = StageRun(cfg, stage)
        if run.complete and key in run.manifest.get("outputs", {}):
            return run.manifest["outputs"][key]
    return None


def training_data(cfg: R1VConfig, stage: str) -> str:
    """The data `stage` reads: the newest `data` output of the finished stages before it (scored data, else
    distilled data), else the canonical train split. Never a stage's own output: a resubmitted, finished
    stage must see the inputs it ran with."""
    earlier = STAGES[: STAGES.index(stage)]
    return _newest_output(cfg, earlier, "data") or dataset_uris(cfg)[0]


def newest_model(cfg: R1VConfig) -> str | None:
    """The newest finished stage's model. Distillation's `model` is the one it generated with, not one it
    made, so it does not count."""
    return _newest_output(cfg, [s for s in STAGES if s != "distill"], "model")


def training_inputs(cfg: R1VConfig, stage: str, model_from: str, model_key: str) -> dict[str, str]:
    """What a training stage reads, as its manifest records it: `model_from`'s model (under `model_key`),
    the newest training data before `stage`, and the test split."""
    _, test_uri = dataset_uris(cfg)
    return {model_key: stage_output(cfg, model_from), "train": training_data(cfg, stage), "test": test_uri}
