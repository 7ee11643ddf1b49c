"""Group-relative advantages (GRPO), as a small pure function."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - group mean) / (group std + eps) for rewards laid out group after group.

    std is torch.std (unbiased), as TRL and verl use; a zero-variance group gives
    zeros. With scale_by_std=False this is Dr.GRPO's mean-centering only.
    """
    if group_size <= 0:
        raise ValueError(f"group_size={group_size} must be positive")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a multiple of group_size={group_size}")
    grouped = rewards.reshape(-1, group_size).to(torch.float32)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(rewards.shape)
