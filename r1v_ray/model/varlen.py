"""Variable-length attention for packed rows, registered with transformers' attention interface.

A packed row holds whole samples back to back with positions restarting at 0.
Dense masking of such a row costs O(L^2) for the whole row; this attention runs
causal SDPA per sample, O(sum of Li^2), as flash-attention's varlen kernels do on
GPU. GRPO's learner also packs a group's prompt once with all its completions
(`SharedPromptLayout`, passed as the `r1v_shared_prompts` forward kwarg). Used for
the LLM only; anything without restarting positions or a layout (generation,
unpacked batches) goes to plain SDPA unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "r1v_varlen_sdpa"

LAYOUT_KWARG = "r1v_shared_prompts"


@dataclass(frozen=True)
class SharedPromptLayout:
    """A packed row (batch of 1) of prompt groups: per group (prompt start, prompt length, ((completion start,
    completion length), ...)). Completion positions continue from the prompt's end; a completion attends to
    its prompt and, causally, to itself."""

    groups: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]


def _shared_prompt_attention(query, key, value, layout: SharedPromptLayout, dropout: float, scaling):
    out = torch.empty_like(query)
    for p_start, p_len, completions in layout.groups:
        p = slice(p_start, p_start + p_len)
        out[:, :, p] = F.scaled_dot_product_attention(
            query[:, :, p], key[:, :, p], value[:, :, p], dropout_p=dropout, is_causal=True, scale=scaling
        )
        for c_start, c_len in completions:
            if not c_len:
                continue
            c = slice(c_start, c_start + c_len)
            # queries see the whole prompt, then their own completion causally: lower-right aligned causal
            out[:, :, c] = F.scaled_dot_product_attention(
                query[:, :, c],
                torch.cat([key[:, :, p], key[:, :, c]], 2),
                torch.cat([value[:, :, p], value[:, :, c]], 2),
                attn_mask=causal_lower_right(c_len, p_len + c_len),
                dropout_p=dropout,
                scale=scaling,
            )
    return out


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per batch row, [start, end) of each sample: a new one starts wherever the position is 0."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def varlen_sdpa_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    position_ids: torch.Tensor | None = None,
    r1v_shared_prompts: SharedPromptLayout | None = None,
    **kwargs,
):
    if r1v_shared_prompts is not None:
        kv_groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, kv_groups), repeat_kv(value, kv_groups)
        out = _shared_prompt_attention(query, key, value, r1v_shared_prompts, dropout, scaling)
        return out.transpose(1, 2).contiguous(), None
    # Packed rows carry restarting positions (their block-diagonal mask is then redundant).
    packed = (
        position_ids is not None
        and query.shape[2] == key.shape[2]
        and query.shape[2] > 1
        and bool((position_ids[:, 1:] == 0).any())
    )
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.empty_like(query)
    for b, segments in enumerate(_segments(position_ids.expand(query.shape[0], -1))):
        for start, end in segments:
            out[b : b + 1, :, start:end] = F.scaled_dot_product_attention(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
            )
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(**kwargs):
    """No mask for rows without padding or cache (packed or single samples): the attention above is causal per
    sample, and building transformers' block-diagonal mask for a packed row costs O(L^2) for nothing.
    Anything else (padding, a KV cache) gets SDPA's mask unchanged. transformers passes every argument by
    name (masking_utils' `mask_interface(batch_size=..., ...)`), and they all go on to `sdpa_mask` as they are."""
    return None if _causal_per_sample(**kwargs) else sdpa_mask(**kwargs)


def _causal_per_sample(
    q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0, attention_mask=None, **_
) -> bool:
    return attention_mask is None and q_length == kv_length and q_offset == 0 and kv_offset == 0


AttentionInterface.register(NAME, varlen_sdpa_forward)
AttentionMaskInterface.register(NAME, varlen_mask)


def use_varlen_attention(model) -> None:
    """Route the LLM's attention through the packed-row kernel (the vision tower keeps its own)."""
    model.model.language_model.config._attn_implementation = NAME


def uses_varlen_attention(model) -> bool:
    """True when the LLM of `model` (or of the DeepSpeed engine wrapping it) runs this module's attention."""
    model = getattr(model, "module", model)
    return model.model.language_model.config._attn_implementation == NAME
