"""The run directory's layout: every path a stage reads or writes, named once.

A run directory is a local path (shared by every node on a cluster) or a URI of any pyarrow/fsspec
filesystem (`s3://`, `gs://`, ...); its files are read and written through `r1v_ray.store`. Stages,
the report and the dry-run plan take their paths from `RunLayout` instead of spelling them out.

    run_dir/
      data/synthetic_{train,test}      the synthetic task, written once
      tiny_parts/, base_model/         tiny model parts; the assembled starting point for distillation
      judge_cache/                     one JSON per judge request hash (unless judge.cache_dir)
      <stage>/manifest.json            what ran, and whether it finished (`stages.manifest.StageRun`)
      <stage>/metrics.jsonl            the stage's metrics records
      <stage>/data/, rejected/         its output dataset and rejected rows with reasons
      distill/assessed/, bounds.json   pass 1 of distillation (bounds.json vouches for assessed/)
      mlp_init/<sub-stage>/...         a training folder (`TRAIN_*` names), then mlp_init/model
      sft/M<t>/..., sft/eval/<model>/  training folders, error sets, re-distillation; evaluations
      grpo/checkpoints/step-<n>/       DeepSpeed state (ds/) and an HF export (model/); latest.json names one
      report/                          plots and report.md

Engines that need local files stage them into a node-local scratch folder (`scratch_root`).
"""

from __future__ import annotations

import json
import os
import tempfile

from r1v_ray import store

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
BOUNDS = "bounds.json"  # distillation pass 1: the score bounds, written last
DONE = "done.json"  # a re-distillation before an SFT iteration: written last
EVAL_JSON = "eval.json"  # an evaluation: written last
EVAL_MD = "eval.md"
ERROR_IDS = "error_ids.json"  # an SFT iteration's error set E (ids), written last
LATEST = "latest.json"  # GRPO: the newest finished checkpoint
# A training folder (one SFT run): its filtered data, rejected rows, final HF model and summary.
TRAIN_DATA, TRAIN_REJECTED, TRAIN_MODEL, TRAIN_SUMMARY = "data", "rejected", "model", "summary.json"
SCRATCH_ENV = "R1V_SCRATCH_DIR"


class RunLayout:
    """Paths in one run directory (URIs when the run directory is one)."""

    def __init__(self, run_dir: str):
        # A local path is kept as spelled (jobs make it absolute first: `resolve_run_dir`).
        self.root = run_dir.rstrip("/") if store.is_remote(run_dir) else store.local_path(run_dir)

    def path(self, *parts: str) -> str:
        return store.join(self.root, *parts)

    # ---- the whole run
    def synthetic(self, split: str) -> str:
        return self.path("data", f"synthetic_{split}")

    def tiny_parts(self) -> str:
        return self.path("tiny_parts")

    def base_model(self) -> str:
        return self.path("base_model")

    def judge_cache(self, configured: str | None = None) -> str:
        return configured or self.path("judge_cache")

    def report(self) -> str:
        return self.path("report")

    # ---- one stage
    def stage(self, stage: str, *parts: str) -> str:
        return self.path(stage, *parts)

    def manifest(self, stage: str) -> str:
        return self.stage(stage, MANIFEST)

    def metrics(self, stage: str) -> str:
        return self.stage(stage, METRICS)

    def data(self, stage: str) -> str:
        return self.stage(stage, "data")

    def rejected(self, stage: str) -> str:
        return self.stage(stage, "rejected")

    def model(self, stage: str) -> str:
        return self.stage(stage, "model")

    def redistill_done(self, t: int) -> str:
        return self.stage("sft", f"M{t}", "redistill", DONE)

    def grpo_checkpoints(self) -> str:
        return self.stage("grpo", "checkpoints")

    def eval_out(self, name: str) -> str:
        return self.path("eval", name)

    def all_metrics(self) -> list[str]:
        """Every metrics.jsonl below the stage folders (SFT runs keep one per training folder)."""
        return [p for p in store.find(self.root, METRICS) if store.dirname(p) != self.root]


def checkpoint_step(checkpoints: str, step: int, *parts: str) -> str:
    return store.join(checkpoints, f"step-{step}", *parts)


def scratch_root(configured: str | None = None) -> str:
    """This node's scratch folder: $R1V_SCRATCH_DIR (a node's own setting, e.g. its NVMe mount), else the
    `scratch_dir` config key, else <tmp>/r1v_scratch."""
    root = os.environ.get(SCRATCH_ENV) or configured or os.path.join(tempfile.gettempdir(), "r1v_scratch")
    os.makedirs(root, exist_ok=True)
    return root


def submission_id() -> str | None:
    """The submission id when this process is a `ray job submit` entrypoint (Ray sets the job's config
    in the driver's environment), else None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return (json.loads(raw).get("metadata") or {}).get("job_submission_id") or "unknown"
    except ValueError:
        return "unknown"


def resolve_run_dir(run_dir: str) -> str:
    """A URI as it is; a local path made absolute here, on the submitting machine (Ray workers run
    elsewhere). A relative path inside a `ray job submit` job is refused: it would resolve in Ray's
    package cache for the job's working_dir, which Ray may delete, and differ per node."""
    if store.is_remote(run_dir):
        return run_dir.rstrip("/")
    path = store.local_path(run_dir)
    if not os.path.isabs(path):
        job = submission_id()
        if job:
            raise ValueError(
                f"run_dir={run_dir!r} is relative, and this is the Ray job {job} (ray job submit): it would "
                f"resolve under the job's working directory {os.getcwd()} (Ray's package cache, which Ray "
                "may delete, and not the same folder on other nodes). Pass an absolute path every node "
                "shares, or an object-store URI: --set run_dir=s3://BUCKET/PATH"
            )
    return os.path.abspath(path)
