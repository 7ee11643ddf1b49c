"""Judges for QDAM / VTIA, verification, revision and RM scoring: OpenAI-compatible or offline."""

from __future__ import annotations

from r1v_ray.config import JudgeConfig
from r1v_ray.engines.judge.base import Assessment, Judge, JudgeError, Usage, image_clarity, split_think
from r1v_ray.engines.judge.offline import OfflineJudge

__all__ = [
    "Assessment",
    "Judge",
    "JudgeError",
    "OfflineJudge",
    "Usage",
    "image_clarity",
    "judge_api_key",
    "make_judge",
    "split_think",
]


def make_judge(
    cfg: JudgeConfig, cache_dir: str | None, concurrency_share: float = 1.0, api_key: str | None = None
) -> Judge:
    """The configured judge; `concurrency_share` splits the concurrency and rate limits among pool actors."""
    if cfg.kind == "offline":
        return OfflineJudge()
    from r1v_ray.engines.judge.openai_judge import OpenAIJudge

    return OpenAIJudge(cfg, cache_dir, concurrency_share, api_key)


def judge_api_key(cfg: JudgeConfig) -> str | None:
    """Read the judge's key on the driver (a missing key fails before any work starts)."""
    if cfg.kind == "offline":
        return None
    from r1v_ray.engines.judge.openai_judge import api_key_from_env

    return api_key_from_env(cfg)
