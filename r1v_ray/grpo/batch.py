"""Turning rollouts into learner inputs, and per-token log-probs of completions.

A group's completions share their prompt (image included): the learner packs each
prompt once, followed by its completions, whose positions continue from the
prompt's end and whose attention reaches the prompt and themselves only
(`r1v_ray.model.varlen`). The vision tower and the prompt tokens then run once per
group instead of once per completion, with the same log-probs as separate sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from r1v_ray.model.varlen import LAYOUT_KWARG, SharedPromptLayout, uses_varlen_attention
from r1v_ray.prompts import GenerationRequest, PromptBuilder


@dataclass
class Trajectory:
    """One sampled completion with what the learner needs: the prompt, tokens, rollout log-probs, advantage."""

    request: GenerationRequest
    completion_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float
    reward: float


@dataclass
class PromptGroup:
    """One prompt (token ids with image placeholders expanded, pixel values) and the completions sampled for it."""

    prompt_ids: list[int]
    pixel_values: np.ndarray | None
    completions: list[list[int]] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # each completion's index in the trajectory list


def encode(trajectories: list[Trajectory], processor, builder: PromptBuilder) -> list[PromptGroup]:
    """Trajectories grouped by prompt, in first-seen order; each prompt rendered and processed once.

    A group is the trajectories holding one request object (a step's completions of a prompt share it, also
    after Ray pickles them together): request ids are row ids, and two rows may share one."""
    groups: dict[tuple[str, int], PromptGroup] = {}
    for i, traj in enumerate(trajectories):
        key = (traj.request.request_id, id(traj.request))
        if key not in groups:
            text, images, _ = builder.render(traj.request)
            kwargs = {"text": [text], "return_tensors": "np"}
            if images:
                kwargs["images"] = images
            enc = processor(**kwargs)
            groups[key] = PromptGroup(enc["input_ids"][0].tolist(), enc.get("pixel_values"))
        groups[key].completions.append(list(traj.completion_ids))
        groups[key].members.append(i)
    return list(groups.values())


def pack_groups(groups: list[PromptGroup]) -> tuple[dict[str, torch.Tensor], SharedPromptLayout, list[int], list[int]]:
    """One row: each prompt once, then its completions. Returns the model inputs, the layout for the attention,
    and for every completion token (group by group, completion by completion) the position whose logits
    predict it and the token itself."""
    ids, positions, pixels, layout, predict_at, targets = [], [], [], [], [], []
    for g in groups:
        p_start, p_len = len(ids), len(g.prompt_ids)
        ids += g.prompt_ids
        positions += range(p_len)
        if g.pixel_values is not None:
            pixels.append(g.pixel_values)
        spans = []
        for completion in g.completions:
            c_start = len(ids)
            spans.append((c_start, len(completion)))
            ids += completion
            positions += range(p_len, p_len + len(completion))
            if completion:  # token 0 is predicted by the prompt's last position, token j by token j-1
                predict_at += [p_start + p_len - 1] + list(range(c_start, c_start + len(completion) - 1))
                targets += completion
        layout.append((p_start, p_len, tuple(spans)))
    batch = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}
    if pixels:
        batch["pixel_values"] = torch.from_numpy(np.concatenate(pixels))
    return batch, SharedPromptLayout(tuple(layout)), predict_at, targets


def completion_logprobs(model, groups: list[PromptGroup], device: str = "cpu", with_entropy: bool = False):
    """[n, T] log-probs of each trajectory's completion tokens (rows in trajectory order), their mask,
    and optionally the per-token entropy. The model's LLM must run r1v_ray's varlen attention."""
    if not uses_varlen_attention(model):
        raise ValueError(
            "completion_logprobs packs prompts once per group: call "
            "r1v_ray.model.varlen.use_varlen_attention(model) first"
        )
    batch, layout, predict_at, targets = pack_groups(groups)
    batch = {k: v.to(device) for k, v in batch.items()}
    keep = torch.tensor(predict_at, device=device)
    logits = model(**batch, use_cache=False, logits_to_keep=keep, **{LAYOUT_KWARG: layout}).logits[0].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    token_logp = logp_all.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    n = sum(len(g.members) for g in groups)
    width = max((len(c) for g in groups for c in g.completions), default=0)
    out = torch.zeros(n, width, device=logits.device)
    ent = torch.zeros(n, width, device=logits.device)
    mask = torch.zeros(n, width, device=logits.device)
    offset = 0
    for g in groups:
        for member, completion in zip(g.members, g.completions):
            length = len(completion)
            out[member, :length] = token_logp[offset : offset + length]
            if entropy is not None:
                ent[member, :length] = entropy[offset : offset + length]
            mask[member, :length] = 1.0
            offset += length
    return out, mask, (ent if with_entropy else None)
