"""Variable-length attention for packed rows, registered with transformers' attention interface.

A packed row holds whole samples back to back with positions restarting at 0.
Dense masking of such a row costs O(L^2) for the whole row; this attention runs
causal SDPA per sample, O(sum of Li^2), as flash-attention's varlen kernels do on
GPU. Used for the LLM only; anything without restarting positions (generation,
unpacked batches) goes to plain SDPA unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "r1v_varlen_sdpa"


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per batch row, [start, end) of each sample: a new one starts wherever the position is 0."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        position_ids: torch.Tensor | None = None, **kwargs):
    # Packed rows carry restarting positions (their block-diagonal mask is then redundant).
    packed = (position_ids is not None and query.shape[2] == key.shape[2] and query.shape[2] > 1
              and bool((position_ids[:, 1:] == 0).any()))
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.empty_like(query)
    for b, segments in enumerate(_segments(position_ids.expand(query.shape[0], -1))):
        for start, end in segments:
            out[b:b + 1, :, start:end] = F.scaled_dot_product_attention(
                query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
                dropout_p=dropout, is_causal=True, scale=scaling,
            )
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask for rows without padding or cache (packed or single samples): the attention above is causal per
    sample, and building transformers' block-diagonal mask for a packed row costs O(L^2) for nothing.
    Anything else (padding, a KV cache) gets SDPA's mask unchanged."""
    if attention_mask is None and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(NAME, varlen_sdpa_forward)
AttentionMaskInterface.register(NAME, varlen_mask)


def use_varlen_attention(model) -> None:
    """Route the LLM's attention through the packed-row kernel (the vision tower keeps its own)."""
    model.model.language_model.config._attn_implementation = NAME
