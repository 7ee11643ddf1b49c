"""Experiment tracking for every stage: TensorBoard event files by default (offline), MLflow and W&B by config.

`StageMetrics` feeds each record it appends to `metrics.jsonl` to the trackers too, at the
same step, so every backend shows the same numbers. A tracker finds its context in the
stage's manifest (the nearest `manifest.json` at or above the metrics file, written when
the stage starts, in whichever process logs): the `tracking` config section, the run
directory and the resolved config. The run is named `<run dir name>/<metrics name>`;
the config (flattened) becomes params, the config and manifest artifacts. The config names
environment variables for secrets, never their values, and it is scrubbed once more on the
way out (credentials in URLs, values of secret-looking keys), so no secret reaches a tracker.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import time
from typing import Any

import yaml

from r1v_ray.config import TrackingConfig, from_dict

MANIFEST = "manifest.json"
_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credential)s?$", re.IGNORECASE)


def _lazy(module: str, backend: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"tracking.{backend}=true needs the {module} package: pip install 'r1v_ray[tracking]'"
        ) from None


def scrub(value: Any, key: str = "") -> Any:
    """`value` with credentials in URLs masked and secret-looking keys' values replaced (recursively)."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and not key.endswith("_env"):
            return "[redacted]"
        return re.sub(r"(\w+://)[^/@\s]+@", r"\1[redacted]@", value)
    return value


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"judge.max_tokens": "2048", ...}: one param per config leaf."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return out


def find_manifest(jsonl_path: str, levels: int = 4) -> tuple[dict, str] | None:
    """(manifest, its folder) nearest at or above the metrics file, or None (a stage run outside a StageRun)."""
    from r1v_ray import store

    folder = _folder(jsonl_path)
    for _ in range(levels):
        path = store.join(folder, MANIFEST)
        if store.is_file(path):
            try:
                return json.loads(store.read_text(path)), folder
            except (OSError, json.JSONDecodeError):
                return None
        parent = store.dirname(folder)
        if parent == folder or ("://" in folder) != ("://" in parent):  # the filesystem's root
            return None
        folder = parent
    return None


def _folder(jsonl_path: str) -> str:
    from r1v_ray import store

    return store.dirname(jsonl_path) if store.is_remote(jsonl_path) else os.path.dirname(os.path.abspath(jsonl_path))


def local_mirror(folder: str) -> str:
    """Where a tracker writes its files for `folder`: the folder itself when local, else a node-local
    mirror in scratch whose files are uploaded to `folder` (TensorBoard, W&B write local files only)."""
    from r1v_ray import store
    from r1v_ray.run_dir import scratch_root

    if not store.is_remote(folder):
        return folder
    scheme, rest = folder.split("://", 1)
    return os.path.join(scratch_root(), "trackers", scheme, *[p for p in rest.split("/") if p not in ("", "..")])


class Context:
    """What a stage's trackers need: where to write, what to call the run, what to record with it."""

    def __init__(self, stage: str, jsonl_path: str, tracking: TrackingConfig | None = None):
        found = find_manifest(jsonl_path)
        self.manifest, stage_dir = found if found else ({}, _folder(jsonl_path))
        config = self.manifest.get("config") or {}
        self.tracking = tracking or from_dict(TrackingConfig, config.get("tracking") or {})
        self.run_dir = config.get("run_dir") or os.path.dirname(stage_dir)
        self.stage, self.dir = stage, _folder(jsonl_path)
        self.run_name = f"{os.path.basename(os.path.normpath(self.run_dir))}/{stage}"
        self.config = scrub(config)
        self.params = flatten(self.config)
        self.artifacts = {"config.yaml": yaml.safe_dump(self.config, sort_keys=False)} if config else {}
        if self.manifest:
            self.artifacts["manifest.json"] = json.dumps(scrub(self.manifest), indent=2, default=str)
        self.tags = {"r1v.run_dir": scrub(str(self.run_dir)), "r1v.stage": stage}


class TensorBoardTracker:
    """Event files in <stage dir>/tensorboard/<metrics name>, written on the first log with `purge_step` at
    that step: a resumed stage drops the events its metrics.jsonl dropped, so both stay step-aligned."""

    def __init__(self, ctx: Context):
        from r1v_ray import store

        self.ctx, self.writer = ctx, None
        self.remote = store.join(ctx.dir, "tensorboard", *ctx.stage.split("/"))
        self.logdir = os.path.join(local_mirror(ctx.dir), "tensorboard", *ctx.stage.split("/"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            # A unique, increasing suffix: two writers within one second never share (and truncate) a file,
            # and readers take the files in the order they were written.
            self.writer = SummaryWriter(logdir=self.logdir, purge_step=step, filename_suffix=f".{time.time_ns()}")
            for name, text in self.ctx.artifacts.items():
                self.writer.add_text(name, f"```\n{text}\n```", step)
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # readers (and a crash) see every logged step
        if self.remote != self.logdir:  # a remote run directory: the event files go up after each flush
            from r1v_ray import store

            store.upload_dir(self.logdir, self.remote)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker:
    """One MLflow run per metrics name, through MlflowClient (no global active run: stages may share a process)."""

    def __init__(self, ctx: Context):
        mlflow = _lazy("mlflow", "mlflow")
        from mlflow.entities import Param

        cfg = ctx.tracking
        self.client = mlflow.MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
        experiment = self.client.get_experiment_by_name(cfg.mlflow_experiment)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(cfg.mlflow_experiment)
            except mlflow.exceptions.MlflowException:  # another process created it first
                experiment_id = self.client.get_experiment_by_name(cfg.mlflow_experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=ctx.run_name, tags=ctx.tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in ctx.params.items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        for name, text in ctx.artifacts.items():
            self.client.log_text(self.run_id, text, name)

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
            self.run_id = None


class WandbTracker:
    """A W&B run (offline by default: files under <stage dir>/wandb, `wandb sync` uploads them later)."""

    def __init__(self, ctx: Context):
        wandb = _lazy("wandb", "wandb")
        cfg = ctx.tracking
        root = cfg.wandb_dir or os.path.join(local_mirror(ctx.dir), "wandb")  # `wandb sync` reads local files
        os.makedirs(root, exist_ok=True)
        self.run = wandb.init(
            project=cfg.wandb_project,
            name=ctx.run_name,
            dir=root,
            mode=cfg.wandb_mode,
            config=ctx.config,
            tags=[ctx.stage.split("/")[0]],
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),  # no captured output: logs go elsewhere
        )
        for name, text in ctx.artifacts.items():
            path = os.path.join(root, f"r1v_{name}")  # W&B keeps its own config.yaml in the run
            with open(path, "w") as f:
                f.write(text)
            self.run.save(path, base_path=root, policy="now")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


_OPEN: list = []  # trackers of this process not yet closed


def open_trackers(stage: str, jsonl_path: str, tracking: TrackingConfig | None = None) -> list:
    """The trackers the stage's config asks for (each `log` is already durable; closing marks runs finished)."""
    ctx = Context(stage, jsonl_path, tracking)
    kinds = [
        (ctx.tracking.tensorboard, TensorBoardTracker),
        (ctx.tracking.mlflow, MLflowTracker),
        (ctx.tracking.wandb, WandbTracker),
    ]
    trackers = [kind(ctx) for wanted, kind in kinds if wanted]
    if trackers and not _OPEN:
        atexit.register(_close_at_exit)
    _OPEN.extend(trackers)
    return trackers


def close_trackers(trackers: list) -> None:
    for tracker in trackers:
        tracker.close()
        if tracker in _OPEN:
            _OPEN.remove(tracker)


def close_all() -> None:
    """Close every tracker this process opened (a stage's end: MLflow and W&B runs are marked finished)."""
    close_trackers(list(_OPEN))


def _close_at_exit() -> None:
    # At exit a tracking server may be gone already: one quick try each, never minutes of retries.
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    while _OPEN:
        try:
            _OPEN.pop().close()
        except Exception as exc:
            print(f"[tracking] could not close a tracker at exit: {type(exc).__name__}", file=sys.stderr)
