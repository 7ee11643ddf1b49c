"""Turning rollouts into learner inputs, and per-token log-probs of completions from packed rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1v_ray.engines.rollout.types import GenerationRequest, PromptBuilder
from r1v_ray.sft.samples import IGNORE, labelled_logits, pack


@dataclass
class Trajectory:
    """One sampled completion with what the learner needs: the prompt, tokens, rollout log-probs, advantage."""

    request: GenerationRequest
    completion_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float
    reward: float


def encode(trajectories: list[Trajectory], processor, builder: PromptBuilder) -> list[dict]:
    """Training samples whose labels are the completion tokens (same shape as SFT samples).

    A group's completions share one prompt: it is rendered and run through the processor once.
    """
    prompts: dict[str, tuple[list[int], object]] = {}
    out = []
    for traj in trajectories:
        key = traj.request.request_id
        if key not in prompts:
            text, images, _ = builder.render(traj.request)
            kwargs = {"text": [text], "return_tensors": "np"}
            if images:
                kwargs["images"] = images
            enc = processor(**kwargs)
            prompts[key] = (enc["input_ids"][0].tolist(), enc["pixel_values"])
        prompt, pixels = prompts[key]
        completion = list(traj.completion_ids)
        out.append({"input_ids": prompt + completion, "labels": [IGNORE] * len(prompt) + completion,
                    "pixel_values": pixels})
    return out


def completion_logprobs(model, samples: list[dict], device: str = "cpu", with_entropy: bool = False):
    """[n, T] log-probs of each sample's labelled (completion) tokens, their mask, and optionally entropy.

    All samples go through one packed row (varlen attention keeps them apart); logits are computed at
    completion positions only, which come back in sample order.
    """
    batch = {k: v.to(device) for k, v in pack(samples).items()}
    logits, target = labelled_logits(model, batch)
    logp_all = torch.log_softmax(logits[0], dim=-1)
    token_logp = logp_all.gather(1, target[0].clamp(min=0).unsqueeze(1)).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    lengths = [sum(1 for t in s["labels"][1:] if t != IGNORE) for s in samples]
    width = max(lengths) if lengths else 0
    out = torch.zeros(len(samples), width, device=logits.device)
    ent = torch.zeros(len(samples), width, device=logits.device)
    mask = torch.zeros(len(samples), width, device=logits.device)
    offset = 0
    for i, n in enumerate(lengths):
        out[i, :n] = token_logp[offset:offset + n]
        if entropy is not None:
            ent[i, :n] = entropy[offset:offset + n]
        mask[i, :n] = 1.0
        offset += n
    return out, mask, (ent if with_entropy else None)
