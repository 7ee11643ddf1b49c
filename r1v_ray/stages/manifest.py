"""The run directory: one folder per stage, each with a manifest that says what ran and whether it finished.

A stage whose manifest says `complete` is skipped (unless forced) when its
fingerprint (relevant config and inputs, `stage_fingerprint`) still matches; any other
state means the stage starts again and its trainers resume from their own
checkpoints. Manifests hold the resolved config (which names environment
variables for secrets, never their values), inputs, version, git commit,
metrics and wall time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from typing import Any

import r1v_ray
from r1v_ray import store
from r1v_ray.config import R1VConfig, to_dict
from r1v_ray.run_dir import MANIFEST, RunLayout
from r1v_ray.stage_fingerprint import StageChanged, changed_message, fingerprint, fingerprint_changes
from r1v_ray.tracking import close_all, scrub

__all__ = ["MANIFEST", "StageRun", "describe_input", "describe_inputs", "run_stage"]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(r1v_ray.__file__)),
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_input(value: Any) -> Any:
    """What a stage consumed: a dataset's row count, a checkpoint's fingerprint, else the value itself.

    The fingerprint hashes the checkpoint's config and its weight files' names and sizes: cheap for a
    70 GB model (one listing, on an object store too), and it changes when a checkpoint is replaced.
    """
    if not isinstance(value, str):
        return value
    try:
        files = store.listing(value) if store.is_dir(value) else None
    except Exception:  # not a path on any filesystem we can reach: a plain value
        return value
    if not files:
        return value
    if "config.json" in files:
        digest = hashlib.sha256(store.read_bytes(store.join(value, "config.json")))
        for name in sorted(n for n in files if n.endswith(".safetensors") and "/" not in n):
            digest.update(f"{name}:{files[name]}".encode())
        return {"path": value, "fingerprint": digest.hexdigest()[:16]}
    try:
        from r1v_ray.data.io import count_rows

        rows = count_rows(value)
    except Exception:  # not a dataset
        return value
    digest = hashlib.sha256()  # part files' names and sizes: a dataset rewritten otherwise changes them
    for name in sorted(n for n in files if n.endswith(".parquet") and "/" not in n):
        digest.update(f"{name}:{files[name]}".encode())
    return {"path": value, "rows": rows, "fingerprint": digest.hexdigest()[:16]}


def describe_inputs(inputs: dict | None) -> dict:
    return {k: describe_input(v) for k, v in (inputs or {}).items()}


class StageRun:
    def __init__(self, cfg: R1VConfig, stage: str):
        self.cfg = cfg
        self.stage = stage
        self.layout = RunLayout(cfg.run_dir)
        self.dir = self.layout.stage(stage)
        self.path = self.layout.manifest(stage)
        self._start = time.time()
        self.manifest: dict[str, Any] = self._read()

    def _read(self) -> dict:
        return store.read_json(self.path, {})

    def _write(self) -> None:
        store.write_json(self.path, self.manifest, indent=2, default=str)  # never a half-written manifest

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    def start(self, inputs: dict | None = None) -> None:
        attempts = self.manifest.get("attempts", 0) + 1
        described = describe_inputs(inputs)
        self.manifest = {
            "stage": self.stage,
            "status": "running",
            "attempts": attempts,
            "started": time.time(),
            "version": r1v_ray.__version__,
            "git_commit": git_commit(),
            "config": scrub(to_dict(self.cfg)),  # no credentials (a password in a URL) in the run directory
            "inputs": described,
            "fingerprint": fingerprint(self.cfg, self.stage, described),
            "metrics": self.manifest.get("metrics", {}),
            "outputs": {},
        }
        self._start = time.time()
        self._write()

    def record(self, **metrics: Any) -> None:
        """Add metrics while running (kept on failure, so a resumed stage shows its history)."""
        self.manifest.setdefault("metrics", {}).update(metrics)
        self._write()

    def finish(self, outputs: dict, **metrics: Any) -> dict:
        self.manifest["metrics"].update(metrics)
        self.manifest.update(status="complete", outputs=outputs, wall_s=round(time.time() - self._start, 2))
        self._write()
        return self.manifest

    def fail(self, error: BaseException) -> None:
        self.manifest.update(
            status="failed", error=f"{type(error).__name__}: {error}", wall_s=round(time.time() - self._start, 2)
        )
        self._write()

    def path_for(self, *parts: str) -> str:
        return store.join(self.dir, *parts)


def run_stage(cfg: R1VConfig, stage: str, body, inputs: dict | None = None, force: bool = False) -> dict:
    """Run `body(run) -> (outputs, metrics)` as a stage: skip when complete and unchanged, record failures.

    A complete stage whose fingerprint (its config sections, its inputs) differs from now stops with
    `StageChanged` naming what changed, rather than handing on outputs made with other settings.
    """
    run = StageRun(cfg, stage)
    if run.complete and not force:
        now = fingerprint(cfg, stage, describe_inputs(inputs))
        changes = fingerprint_changes(run.manifest.get("fingerprint"), now)
        if changes:
            raise StageChanged(changed_message(stage, run.path, changes))
        if "fingerprint" not in run.manifest:
            print(f"[{stage}] its manifest predates fingerprints: config and inputs not compared")
        print(f"[{stage}] complete, skipping (force to re-run)")
        return run.manifest
    if force and store.exists(run.dir):  # a forced re-run starts from scratch, not from old checkpoints
        store.remove(run.dir)
        run = StageRun(cfg, stage)
    run.start(inputs)
    try:
        outputs, metrics = body(run)
    except BaseException as exc:
        run.fail(exc)
        raise
    finally:
        close_all()  # the stage's MLflow / W&B runs end with it, not at process exit
    return run.finish(outputs, **metrics)
