"""FlexAttention block masks for packed rows and shared-prompt rows (the fused path of `r1v_ray.model.varlen`).

One `flex_attention` call per layer replaces the padded kernel's gathered SDPA call: a mask_mod says which key each query
may see, `create_block_mask` turns it into a block-sparse mask once per forward, shared by all layers (the
kernel skips 128x128 blocks no query may see, so attention costs about O(sum of Li^2); the
build evaluates the mask_mod over all L^2 pairs, fused when compiled), and grouped-query attention runs
without repeating key/value heads (`enable_gqa=True`).

* Packed rows: positions restart at 0 per sample; a token sees the earlier tokens of its own sample.
* Shared prompts (`SharedPromptLayout`): a prompt token sees its prompt causally; a completion token sees its
  own group's whole prompt and, causally, its own completion.

`compiled=True` runs `torch.compile(flex_attention)` and `torch.compile(create_block_mask)`, as the PyTorch
docs recommend (eager flex_attention materializes the full score matrix). torch has no FlexAttention backward
on CPU, so CPU training keeps the padded kernel (`r1v_ray.model.padded_varlen`); the mask logic is the same on every device.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

if TYPE_CHECKING:
    from r1v_ray.model.varlen import SharedPromptLayout


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] int32: per token, the index of its sample in the row (a new sample wherever the position is 0)."""
    return (position_ids == 0).cumsum(-1).to(torch.int32)


def layout_tokens(layout: SharedPromptLayout, length: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[1, L] per token: its segment (one per prompt and per completion), its group, and whether it is a prompt
    token. Tokens outside the layout get segment and group -1 (they see only each other, causally)."""
    segment = torch.full((length,), -1, dtype=torch.int32)
    group = torch.full((length,), -1, dtype=torch.int32)
    prompt = torch.zeros(length, dtype=torch.bool)
    n = 0  # segments numbered in row order
    for g, (p_start, p_len, completions) in enumerate(layout.groups):
        prompt[p_start : p_start + p_len] = True
        for start, span in ((p_start, p_len), *completions):
            segment[start : start + span], group[start : start + span] = n, g
            n += 1
    return tuple(t.unsqueeze(0).to(device) for t in (segment, group, prompt))


def document_mask_mod(doc: torch.Tensor):
    """Causal within a sample of a packed row (`doc`: `document_ids`)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    return mask_mod


def shared_prompt_mask_mod(segment: torch.Tensor, group: torch.Tensor, prompt: torch.Tensor):
    """Causal within a segment, plus a completion's own group's prompt (`layout_tokens`). Prompts precede
    their completions in the row, so the causal term never hides a completion's prompt."""

    def mask_mod(b, h, q_idx, kv_idx):
        own = segment[b, q_idx] == segment[b, kv_idx]
        its_prompt = (group[b, q_idx] == group[b, kv_idx]) & prompt[b, kv_idx]
        return (q_idx >= kv_idx) & (own | its_prompt)

    return mask_mod


@cache
def _compiled_flex_attention():
    return torch.compile(flex_attention)


@cache
def _compiled_create_block_mask():
    return torch.compile(create_block_mask)


def block_mask(mask_mod, batch: int, length: int, device, compiled: bool) -> BlockMask:
    """The block-sparse mask of `mask_mod` over [batch, length, length] (one for all heads)."""
    make = _compiled_create_block_mask() if compiled and not torch.compiler.is_compiling() else create_block_mask
    return make(mask_mod, batch, None, length, length, device=device)


def flex_masked_attention(query, key, value, mask: BlockMask, scaling: float | None, compiled: bool) -> torch.Tensor:
    """[B, Hq, L, D] attention of [B, Hq, L, D] queries over [B, Hkv, L, D] keys/values under `mask`.
    Inside a model that is itself being compiled the plain function is traced (as transformers does)."""
    attend = _compiled_flex_attention() if compiled and not torch.compiler.is_compiling() else flex_attention
    return attend(query, key, value, block_mask=mask, scale=scaling, enable_gqa=True)
