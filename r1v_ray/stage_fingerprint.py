"""What a finished stage's results depend on: its config sections and its inputs, kept in its manifest.

A complete stage is skipped only while this fingerprint still matches; otherwise the run stops and
says what changed. Left out, because they do not change what a stage produces: where the run
directory is (and how its path is spelled), which environment variables hold secrets, how work is
spread over workers and actors, judge rate limits, retries and prices, and how often progress is
logged, checkpointed or evaluated on the side.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from r1v_ray.config import R1VConfig, to_dict
from r1v_ray.tracking import scrub

# Config keys (dotted; a section covers its keys) that never change a stage's results.
IGNORED = (
    "run_dir",
    "scratch_dir",
    "serve",
    "judge.api_key_env",
    "judge.num_workers",
    "judge.max_concurrency",
    "judge.requests_per_second",
    "judge.max_retries",
    "judge.timeout_s",
    "judge.cache_dir",
    "judge.usd_per_1k_input_tokens",
    "judge.usd_per_1k_output_tokens",
    "judge.max_failure_share",
    "rollout.num_workers",
    "rollout.num_cpus_per_worker",
    "rollout.num_gpus_per_worker",
    "rollout.gpu_memory_utilization",
    "rollout.cpu_kvcache_gib",
    "rollout.node_resource",
    "rollout.batch_size",
    "distill.batch_size",
    "sft.num_workers",
    "sft.checkpoint_every_steps",
    "sft.log_every_steps",
    "sft.max_failures",
    "sft.node_resource",
    "sft.keep_rollout_engines",
    "grpo.num_learners",
    "grpo.node_resource",
    "grpo.checkpoint_every_steps",
    "grpo.eval_every_steps",
    "grpo.max_rollout_restarts",
)
_SFT_TRAINING = tuple(
    f"sft.{k}"
    for k in ("global_batch_size", "micro_batch_size", "max_length", "weight_decay", "warmup_ratio")
    + ("lr_scheduler", "max_grad_norm", "zero_stage", "use_gpu", "seed")
)
# stage -> (config it reads, config within those it does not read). A stage not listed: the whole config.
STAGE_CONFIG: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "distill": (("seed", "model", "data", "rollout", "judge", "distill"), ()),
    "score": (("judge",), ()),
    "mlp_init": (("seed", "model", "sft.mlp_init_stages", *_SFT_TRAINING), ()),
    "reassemble": (("model",), ()),
    # Iterative SFT re-distills and re-scores before each iteration, and evaluates every model.
    "sft": (("seed", "model", "data", "rollout", "judge", "distill", "sft", "eval"), ("sft.mlp_init_stages",)),
    "grpo": (("seed", "model", "data", "rollout", "grpo", "eval", "sft.rm_score_column"), ()),
}
# Path-valued keys: compared as resolved paths (relative to the run directory inside it).
PATH_KEYS = (
    "model.vision_path",
    "model.llm_path",
    "model.substitute_llm_path",
    "data.train_path",
    "data.test_path",
    "distill.model",
)
JOB_SCRIPTS = {"sft": "iterative_sft"}  # stage -> jobs/<script>.py where the names differ


class StageChanged(RuntimeError):
    """A complete stage's config or inputs changed since it ran."""


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def stage_config(cfg: R1VConfig, stage: str) -> dict[str, Any]:
    """The flattened config keys `stage` depends on."""
    reads, skips = STAGE_CONFIG.get(stage, ((), ()))
    return {
        k: _norm_path(v, cfg.run_dir) if k in PATH_KEYS and isinstance(v, str) else v
        for k, v in _flat(scrub(to_dict(cfg))).items()  # kept in the manifest: no credentials
        if (not reads or _covered(k, reads)) and not _covered(k, skips + IGNORED)
    }


def _norm_path(value: str, run_dir: str) -> str:
    """A local path relative to the run directory when inside it, else resolved; URIs as they are."""
    if "://" in value or "://" in run_dir or not (os.path.isabs(value) or os.path.exists(value)):
        return value
    path, root = os.path.realpath(value), os.path.realpath(run_dir)
    return "RUN_DIR" + path[len(root) :] if path == root or path.startswith(root + os.sep) else path


def _norm_input(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": _norm_path(value["path"], run_dir)}
    return _norm_path(value, run_dir) if isinstance(value, str) else value


def fingerprint(cfg: R1VConfig, stage: str, described_inputs: dict) -> dict:
    """{config, inputs, digest} of a stage about to run; `described_inputs` as `runs.describe_input` gives."""
    config = stage_config(cfg, stage)
    inputs = {k: _norm_input(v, cfg.run_dir) for k, v in described_inputs.items()}
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return {"digest": hashlib.sha256(blob.encode()).hexdigest()[:16], "config": config, "inputs": inputs}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def fingerprint_changes(old: dict | None, new: dict) -> list[str]:
    """What differs, one line per key. Keys on one side only are not changes: they come from a newer or
    older version of the code (a new config field), not from the run. No old fingerprint: nothing to compare."""
    if not old or old.get("digest") == new["digest"]:
        return []
    lines = []
    for part in ("config", "inputs"):
        before, now = old.get(part, {}), new[part]
        for key in sorted(set(before) & set(now)):
            if json.dumps(before[key], sort_keys=True, default=str) != json.dumps(
                now[key], sort_keys=True, default=str
            ):
                label = key if part == "config" else f"input '{key}'"
                lines.append(f"{label}: {_short(before[key])} -> {_short(now[key])}")
    return lines


def changed_message(stage: str, manifest: str, changes: list[str]) -> str:
    script = JOB_SCRIPTS.get(stage, stage)
    return (
        f"stage '{stage}' is complete ({manifest}) but was made with other settings than now:\n  "
        + "\n  ".join(changes)
        + f"\nIts outputs would be reused as they are, so the run stops here. To redo '{stage}' with the new "
        f"settings: jobs/pipeline.py --force-stage {stage} (or jobs/{script}.py --force); the finished stages "
        "after it then stop the same way until forced too. To keep its outputs, set the old values back."
    )
