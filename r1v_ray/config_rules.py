"""Rules over values and across fields, checked once when a config loads (`load_config`).

The types are checked by the loader; these are the ranges and the relations between sections that would
otherwise fail hours into a run (an evaluation asking for more tokens than the engine's context, after
distillation and training already ran). Every problem is reported at once, each naming its keys.
"""

from __future__ import annotations

from typing import Any

# The columns the judge's query assessment adds (r1v_ray.distill.udfs): what MLP-init's sub-stages can
# select by, the only scores that exist when it runs.
ASSESSMENT_COLUMNS = (
    "clarity",
    "image_necessity",
    "question_quality",
    "difficulty",
    "reasoning_demand",
    "integration",
    "s_v_raw",
    "s_t_raw",
    "s_i_raw",
)


def _at_least(cfg: Any, minimum: float, *keys: str) -> list[str]:
    out = []
    for key in keys:
        value = _get(cfg, key)
        if value is not None and value < minimum:
            out.append(f"{key}={value} must be >= {minimum}")
    return out


def _positive(cfg: Any, *keys: str) -> list[str]:
    out = []
    for key in keys:
        value = _get(cfg, key)
        if value is not None and not value > 0:
            out.append(f"{key}={value} must be > 0")
    return out


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


SIZES = (  # counts and lengths: at least 1
    "rollout.num_workers", "rollout.tensor_parallel_size", "rollout.max_model_len", "rollout.batch_size",
    "rollout.max_images_per_prompt", "judge.num_workers", "judge.max_concurrency", "distill.batch_size",
    "distill.max_tokens", "sft.global_batch_size", "sft.micro_batch_size", "sft.max_length", "sft.num_workers",
    "sft.checkpoint_every_steps", "sft.log_every_steps", "sft.epochs", "sft.stage1_epochs",
    "sft.error_set_max_tokens",
    "grpo.prompts_per_step", "grpo.max_completion_tokens", "grpo.num_learners", "grpo.checkpoint_every_steps",
    "grpo.eval_every_steps", "grpo.inner_epochs", "grpo.sync_bucket_mb", "eval.runs", "eval.max_tokens",
    "serve.max_n", "serve.max_batch_size", "serve.max_models_per_replica", "serve.max_image_bytes",
)  # fmt: skip
COUNTS = (  # may be 0
    "sft.iterations", "sft.max_failures", "grpo.steps", "grpo.resample_rounds", "grpo.eval_prompts",
    "grpo.max_rollout_restarts", "judge.max_retries", "grpo.kl_coef", "distill.temperature", "eval.temperature",
    "grpo.temperature", "sft.max_grad_norm",
)  # fmt: skip
RATES = (  # strictly positive reals
    "judge.requests_per_second", "judge.timeout_s", "grpo.learning_rate", "sft.stage1_learning_rate",
    "grpo.clip_eps", "rollout.gpu_memory_utilization", "rollout.num_cpus_per_worker",
)  # fmt: skip
# Generation lengths that the rollout engine serves within rollout.max_model_len (prompt included).
GENERATION_LENGTHS = ("eval.max_tokens", "distill.max_tokens", "grpo.max_completion_tokens", "sft.error_set_max_tokens")


def _ranges(cfg: Any) -> list[str]:
    out = _at_least(cfg, 1, *SIZES) + _at_least(cfg, 0, *COUNTS) + _positive(cfg, *RATES)
    out += _at_least(cfg, 2, "grpo.group_size")  # a group of one has no advantage
    for key in ("grpo.top_p", "eval.top_p", "rollout.gpu_memory_utilization"):
        if not 0 < _get(cfg, key) <= 1:
            out.append(f"{key}={_get(cfg, key)} must be in (0, 1]")
    if not 0 <= cfg.sft.warmup_ratio < 1:
        out.append(f"sft.warmup_ratio={cfg.sft.warmup_ratio} must be in [0, 1)")
    for key in ("sft.zero_stage", "grpo.zero_stage"):
        if _get(cfg, key) not in (0, 1, 2, 3):
            out.append(f"{key}={_get(cfg, key)} must be a DeepSpeed ZeRO stage: 0, 1, 2 or 3")
    high = cfg.grpo.clip_eps_high
    if high is not None and high < cfg.grpo.clip_eps:
        out.append(f"grpo.clip_eps_high={high} must be >= grpo.clip_eps={cfg.grpo.clip_eps} (or null)")
    return out


def _lengths(cfg: Any) -> list[str]:
    limit = cfg.rollout.max_model_len
    return [
        f"{key}={_get(cfg, key)} leaves no room for the prompt within rollout.max_model_len={limit}: "
        f"lower {key} or raise rollout.max_model_len"
        for key in GENERATION_LENGTHS
        if _get(cfg, key) >= limit
    ]


def _sft(cfg: Any) -> list[str]:
    s, out = cfg.sft, []
    for key in ("taus", "iteration_lrs"):
        if len(getattr(s, key)) < s.iterations:
            out.append(f"sft.{key} has {len(getattr(s, key))} entries; sft.iterations={s.iterations} needs one each")
    out += [f"sft.iteration_lrs[{i}]={lr} must be > 0" for i, lr in enumerate(s.iteration_lrs) if not lr > 0]
    if s.num_workers >= 1 and s.micro_batch_size >= 1 and s.global_batch_size % (s.num_workers * s.micro_batch_size):
        out.append(
            f"sft.global_batch_size={s.global_batch_size} must be a multiple of sft.num_workers x "
            f"sft.micro_batch_size = {s.num_workers} x {s.micro_batch_size}"
        )
    names = [sub.name for sub in s.mlp_init_stages]
    if len(set(names)) < len(names):
        out.append(f"sft.mlp_init_stages names {names} must be unique (each is a folder of the run)")
    for i, sub in enumerate(s.mlp_init_stages):
        if sub.score_column is not None and sub.score_column not in ASSESSMENT_COLUMNS:
            out.append(
                f"sft.mlp_init_stages[{i}].score_column={sub.score_column!r} does not exist when MLP-init runs "
                f"(it comes first, before any RM score); use one of {list(ASSESSMENT_COLUMNS)} (the judge's query "
                "assessment, run first) or select by sources"
            )
        if (sub.score_column is None) != (sub.min_score is None):
            out.append(f"sft.mlp_init_stages[{i}] ({sub.name}): set both score_column and min_score, or neither")
        if not sub.learning_rate > 0:
            out.append(f"sft.mlp_init_stages[{i}].learning_rate={sub.learning_rate} must be > 0")
    return out


def _grpo(cfg: Any) -> list[str]:
    g, out = cfg.grpo, []
    if g.colocate and (cfg.rollout.num_workers > g.num_learners or cfg.rollout.tensor_parallel_size != 1):
        out.append(
            "grpo.colocate needs rollout.num_workers <= grpo.num_learners and rollout.tensor_parallel_size = 1 "
            f"(one rollout engine per learner bundle; got {cfg.rollout.num_workers}, {g.num_learners}, "
            f"{cfg.rollout.tensor_parallel_size})"
        )
    if g.weight_sync == "nccl" and not (g.use_gpu and cfg.rollout.backend == "vllm"):
        out.append("grpo.weight_sync=nccl needs grpo.use_gpu=true and rollout.backend=vllm (else: object_store)")
    if g.tis_cap is not None and not g.tis_cap >= 1.0:
        out.append(f"grpo.tis_cap={g.tis_cap} must be >= 1 (2.0 is usual), or null to turn it off")
    if g.old_logprobs == "learner":
        if g.tis_cap is not None:
            out.append(
                "grpo.tis_cap weighs each token by the learner's over the rollout's log-probs, which "
                "grpo.old_logprobs=learner does not request: set grpo.old_logprobs=rollout or grpo.tis_cap=null"
            )
        for name in ("off_policy_steps", "ssb_capacity"):
            if getattr(g, name):
                out.append(
                    f"grpo.{name} trains on samples of an older policy, whose log-probs grpo.old_logprobs=learner "
                    "does not keep to correct them: set grpo.old_logprobs=rollout"
                )
    if g.ssb_capacity < 0 or g.ssb_min_abs_advantage < 0:
        out.append("grpo.ssb_capacity and grpo.ssb_min_abs_advantage must be >= 0 (ssb_capacity 0: no buffer)")
    if g.ssb_capacity and not g.drop_zero_variance_groups:
        out.append(
            "grpo.ssb_capacity > 0 replays samples into the slots of dropped zero-variance groups: "
            "set grpo.drop_zero_variance_groups=true (or ssb_capacity: 0)"
        )
    return out


def _eval(cfg: Any) -> list[str]:
    e = cfg.eval
    if e.runs > 1 and e.temperature == 0:  # greedy runs repeat each other: a std of 0 that means nothing
        return [
            f"eval.runs={e.runs} at eval.temperature=0 gives {e.runs} identical greedy runs: set eval.temperature > 0 "
            "(the paper samples at 0.6) or eval.runs=1"
        ]
    return []


def problems(cfg: Any) -> list[str]:
    """Every rule the config breaks, as messages naming the keys; empty when it is usable."""
    return _ranges(cfg) + _lengths(cfg) + _sft(cfg) + _grpo(cfg) + _eval(cfg)
