"""Variable-length attention for packed rows, registered with transformers' attention interface.

A packed row holds whole samples back to back with positions restarting at 0.
Dense masking of such a row costs O(L^2) for the whole row; this attention costs
O(sum of Li^2). GRPO's learner also packs a group's prompt once with all its
completions (`SharedPromptLayout`, passed as the `r1v_shared_prompts` forward kwarg).
Used for the LLM only; anything without restarting positions or a layout
(generation, unpacked batches) goes to plain SDPA unchanged.

Two kernels compute the same attention, picked per call by `use_varlen_attention(model, kernel)`:
* "auto" (the default, what the learners use): on CUDA tensors, FlexAttention, one fused
  `torch.compile`d kernel per layer over a block-sparse mask built once per forward
  (`r1v_ray.model.flex_varlen`); elsewhere, and whenever attention dropout is on (FlexAttention has
  none), the per-sample loop. torch has no FlexAttention backward on CPU, so CPU training needs the loop.
* "loop": causal SDPA per sample (per prompt and completion for shared prompts), on any device.
* "flex": FlexAttention on any device (compiled; on CPU forward only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from r1v_ray.model import flex_varlen

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


def _use_flex(kernel: str, query: torch.Tensor, dropout: float) -> bool:
    if kernel == "flex" and dropout:
        raise ValueError("FlexAttention has no dropout: set the LLM's attention_dropout to 0 or use kernel='loop'")
    return kernel == "flex" or (kernel == "auto" and query.device.type == "cuda" and not dropout)


class _LastMask:
    """One forward's layers share one block mask: kept for the last position_ids tensor (unchanged since, by
    its version counter) or layout object seen, on one device and batch size."""

    key: tuple | None = None
    mask = None

    @classmethod
    def get(cls, source, device, batch: int, length: int, build):
        key = (source, getattr(source, "_version", None), device, batch, length)
        if cls.key is None or cls.key[0] is not source or cls.key[1:] != key[1:]:
            cls.key, cls.mask = key, build()
        return cls.mask


def _block_mask(batch: int, length: int, device, position_ids, layout: SharedPromptLayout | None, compiled: bool):
    """The block mask of a shared-prompt row (`layout`) or else of packed rows (restarting `position_ids`)."""
    if layout is not None:
        mask_mod = flex_varlen.shared_prompt_mask_mod(*flex_varlen.layout_tokens(layout, length, device))
    else:
        mask_mod = flex_varlen.document_mask_mod(flex_varlen.document_ids(position_ids.expand(batch, -1)))
    return flex_varlen.block_mask(mask_mod, batch, length, device, compiled)


def _flex_forward(query, key, value, scaling, position_ids, layout: SharedPromptLayout | None, compiled: bool):
    """The fused path: one block mask per forward, one flex_attention call per layer."""
    batch, length, device = query.shape[0], query.shape[2], query.device
    mask = _LastMask.get(
        position_ids if layout is None else layout,
        device,
        batch,
        length,
        lambda: _block_mask(batch, length, device, position_ids, layout, compiled),
    )
    out = flex_varlen.flex_masked_attention(query, key, value, mask, scaling, compiled)
    return out.transpose(1, 2).contiguous(), None


def _packed_loop(query, key, value, position_ids, dropout: float, scaling):
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
    return out


def _varlen_forward(
    kernel: str,
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
    # Packed rows carry restarting positions (their block-diagonal mask is then redundant).
    packed = (
        r1v_shared_prompts is None
        and position_ids is not None
        and query.shape[2] == key.shape[2]
        and query.shape[2] > 1
        and bool((position_ids[:, 1:] == 0).any())
    )
    if r1v_shared_prompts is None and not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if _use_flex(kernel, query, dropout):
        return _flex_forward(query, key, value, scaling, position_ids, r1v_shared_prompts, compiled=True)
    if r1v_shared_prompts is not None:
        kv_groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, kv_groups), repeat_kv(value, kv_groups)
        out = _shared_prompt_attention(query, key, value, r1v_shared_prompts, dropout, scaling)
    else:
        out = _packed_loop(query, key, value, position_ids, dropout, scaling)
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


# kernel per registered name: NAME picks by device (see the module docstring)
KERNELS = {NAME: "auto", f"{NAME}_flex": "flex", f"{NAME}_loop": "loop"}
for _name, _kernel in KERNELS.items():
    AttentionInterface.register(_name, partial(_varlen_forward, _kernel))
    AttentionMaskInterface.register(_name, varlen_mask)


def use_varlen_attention(model, kernel: str = "auto") -> None:
    """Route the LLM's attention through the packed-row attention (the vision tower keeps its own): "auto"
    (FlexAttention on CUDA, the per-sample loop elsewhere), "flex" or "loop"."""
    names = {k: n for n, k in KERNELS.items()}
    if kernel not in names:
        raise ValueError(f"use_varlen_attention: kernel must be one of {sorted(names)}, got {kernel!r}")
    model.model.language_model.config._attn_implementation = names[kernel]


def uses_varlen_attention(model) -> bool:
    """True when the LLM of `model` (or of the DeepSpeed engine wrapping it) runs this module's attention."""
    model = getattr(model, "module", model)
    return model.model.language_model.config._attn_implementation in KERNELS
