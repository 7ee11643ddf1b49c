"""Turning rollouts into learner inputs, and per-token log-probs of completions from packed rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1v_ray.engines.rollout.types import GenerationRequest, PromptBuilder
from r1v_ray.sft.samples import IGNORE, pack


@dataclass
class Trajectory:
    """One sampled completion with what the learner needs: the prompt, tokens, rollout log-probs, advantage."""

    request: GenerationRequest
    completion_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float
    reward: float


def encode(traj: Trajectory, processor, builder: PromptBuilder) -> dict:
    """A training sample whose labels are the completion tokens (same shape as SFT samples)."""
    text, images, _ = builder.render(traj.request)
    kwargs = {"text": [text], "return_tensors": "np"}
    if images:
        kwargs["images"] = images
    enc = processor(**kwargs)
    prompt = enc["input_ids"][0].tolist()
    return {"input_ids": prompt + list(traj.completion_ids), "labels": [IGNORE] * len(prompt) + list(traj.completion_ids),
            "pixel_values": enc["pixel_values"]}


def completion_logprobs(model, samples: list[dict], device: str = "cpu", with_entropy: bool = False):
    """[n, T] log-probs of each sample's labelled (completion) tokens, their mask, and optionally entropy.

    All samples go through one packed row (varlen attention keeps them apart).
    """
    batch = {k: v.to(device) for k, v in pack(samples).items()}
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits[0, :-1].float()
    target = labels[0, 1:]
    logp_all = torch.log_softmax(logits, dim=-1)
    token_logp = logp_all.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    lengths = [sum(1 for t in s["labels"] if t != IGNORE) for s in samples]
    width = max(lengths) if lengths else 0
    out = torch.zeros(len(samples), width, device=logits.device)
    ent = torch.zeros(len(samples), width, device=logits.device)
    mask = torch.zeros(len(samples), width, device=logits.device)
    offset = 0
    for i, s in enumerate(samples):
        n_prompt = len(s["input_ids"]) - lengths[i]
        # token t of the sequence is predicted at position t-1 of the shifted logits
        start = offset + n_prompt - 1
        out[i, :lengths[i]] = token_logp[start:start + lengths[i]]
        if entropy is not None:
            ent[i, :lengths[i]] = entropy[start:start + lengths[i]]
        mask[i, :lengths[i]] = 1.0
        offset += len(s["input_ids"])
    return out, mask, (ent if with_entropy else None)
