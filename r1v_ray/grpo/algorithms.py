"""GRPO's loss pieces as small pure functions (verl style): surrogate, KL, aggregation, group filters.

Shapes: per-token tensors are [batch, tokens] with a 0/1 `mask` of completion tokens.
Variants by configuration: GRPO (seq-mean of token-means, std-scaled advantages),
Dr.GRPO (token-sum normalized by a constant length, mean-centred advantages),
DAPO (token-mean over the batch, decoupled clip range eps_low / eps_high),
GSPO (one importance ratio per sequence: `sequence_clipped_surrogate`),
truncated importance sampling against the rollout engine's log-probs (`truncated_is_weights`), and
R1V2's Selective Sample Buffer (`ssb_keep`, `ssb_replay`: high-|advantage| samples replayed into steps
whose groups have no variance).
"""

from __future__ import annotations

import torch


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss -min(r A, clip(r, 1-eps_low, 1+eps_high) A), and where clipping was active.

    `advantages` is per sequence ([batch]) or per token ([batch, tokens]).
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return _ppo_clip(torch.exp(logp - old_logp), adv, mask, eps_low, eps_high)


def _ppo_clip(
    ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A) on the mask, and where clipping was active; `ratio`
    [batch, tokens], `adv` [batch, 1] or [batch, tokens]; eps_high None: eps_low."""
    eps_high = eps_low if eps_high is None else eps_high
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    clip_active = (clipped < unclipped).float() * mask
    return loss * mask, clip_active


def sequence_clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (Zheng et al. 2025): the PPO-clip loss with one ratio per sequence, s_i = exp(mean_t(logp - old)).

    logp, old_logp, mask: [batch, tokens]; advantages: [batch]. Returns the per-token loss [batch, tokens]
    (every token of sequence i holds -min(s_i A_i, clip(s_i) A_i)) and where clipping was active. As GSPO-token
    (the paper's eq. 13), the token's value is sg[s_i] * pi_t / sg[pi_t]: equal to s_i, with the gradient of
    s_i spread over the tokens; `aggregate(..., "seq_mean_token_mean")` then gives the paper's objective.
    """
    lengths = mask.sum(-1).clamp(min=1)
    seq_log_ratio = ((logp - old_logp) * mask).sum(-1) / lengths  # [batch]
    log_ratio = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))  # the clamp keeps exp finite on outliers
    return _ppo_clip(ratio, advantages.unsqueeze(-1), mask, eps_low, eps_high)


def truncated_is_weights(
    proximal_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "off-policy RL in disguise"): per-token weights
    min(pi_learner / pi_rollout, cap), no gradient, [batch, tokens], zero off the mask.

    The tokens were sampled by the rollout engine (older weights when rollouts overlap the update, and vLLM's
    kernels either way); the clipped ratio is then taken against the learner's own log-probs before the
    update (`proximal_logp`) and the loss of each token is weighted by how much likelier the learner finds it.
    """
    if cap <= 0:
        raise ValueError(f"grpo.tis_cap={cap}: must be > 0 (2.0 is usual), or null to turn it off")
    log_w = (proximal_logp - rollout_logp).detach()
    return torch.exp(torch.clamp(log_w, max=torch.log(torch.tensor(float(cap))).item())) * mask


def ssb_keep(advantages: torch.Tensor, min_abs_advantage: float) -> torch.Tensor:
    """R1V2's Selective Sample Buffer, which samples to keep: [n] advantages -> [n] bool, |A| >= threshold
    (and never a zero advantage: it would replay no signal)."""
    magnitude = advantages.abs()
    return (magnitude >= min_abs_advantage) & (magnitude > 0)


def ssb_replay(buffer_advantages: torch.Tensor, need: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which buffered samples fill `need` slots left by zero-variance groups: the largest |A| first (ties: the
    earlier entry). [m] advantages -> (indices to replay [min(need, m)], indices that stay [m - that])."""
    if need < 0:
        raise ValueError(f"need={need} must be >= 0")
    order = torch.sort(buffer_advantages.abs(), descending=True, stable=True).indices
    take = min(need, buffer_advantages.numel())
    return order[:take].sort().values, order[take:].sort().values


def ssb_evict(buffer_advantages: torch.Tensor, capacity: int) -> torch.Tensor:
    """Indices to keep when the buffer holds more than `capacity` samples: the largest |A|, newer entries
    (higher index) winning ties. [m] -> [min(m, capacity)], ascending."""
    m = buffer_advantages.numel()
    if m <= capacity:
        return torch.arange(m)
    newest_first = torch.arange(m - 1, -1, -1)
    order = newest_first[torch.sort(buffer_advantages.abs()[newest_first], descending=True, stable=True).indices]
    return order[:capacity].sort().values


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimators (Schulman): k1 = log r, k2 = (log r)^2 / 2, k3 = r' - 1 - log r'."""
    delta = logp - ref_logp
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.pow(2)
    if kind == "k3":
        # with r' = ref / pi: unbiased and always >= 0; clamp keeps exp finite on outliers
        log_ratio = torch.clamp(-delta, -20.0, 20.0)
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"grpo.kl_estimator={kind!r}: use k1, k2 or k3")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    max_tokens: int | None = None,
    total_tokens: float | None = None,
    total_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    token_mean              sum over all tokens / number of tokens (DAPO)
    seq_mean_token_mean     mean over sequences of each sequence's token mean (GRPO)
    seq_mean_token_sum_norm sum / (sequences * max_tokens): no length bias (Dr.GRPO)

    `total_tokens` / `total_seqs` replace this shard's own counts when the batch is split over data-parallel
    ranks: the shards' results then sum to the whole batch's (pass the global counts).
    """
    tokens = mask.sum().clamp(min=1) if total_tokens is None else max(total_tokens, 1.0)
    seqs = per_token.shape[0] if total_seqs is None else max(total_seqs, 1.0)
    if mode == "token_mean":
        return (per_token * mask).sum() / tokens
    if mode == "seq_mean_token_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / seqs
    if mode == "seq_mean_token_sum_norm":
        norm = max_tokens if max_tokens is not None else per_token.shape[-1]
        return (per_token * mask).sum() / (seqs * norm)
    raise ValueError(f"grpo.loss_agg={mode!r}: use token_mean, seq_mean_token_mean or seq_mean_token_sum_norm")


def nonzero_variance_groups(rewards: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """Boolean per group: True where rewards differ (a zero-variance group has no learning signal)."""
    if rewards.numel() % group_size:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a multiple of group_size={group_size}")
    grouped = rewards.reshape(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > eps


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the softmax distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprob_gap(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |learner - rollout| log-prob of the sampled tokens: the train/inference mismatch metric."""
    return masked_mean((learner_logp - rollout_logp).abs(), mask).item()
