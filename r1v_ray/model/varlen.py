"""Variable-length attention for packed rows, registered with transformers' attention interface.

A packed row holds whole samples back to back with positions restarting at 0.
Dense masking of such a row costs O(L^2) for the whole row; this attention costs
O(sum of Li^2) (FlexAttention) or O(samples x longest^2) (the padded kernel). GRPO's learner also packs a group's prompt once with all its
completions (`SharedPromptLayout`, passed as the `r1v_shared_prompts` forward kwarg).
Used for the LLM only; anything without restarting positions or a layout
(generation, unpacked batches) goes to plain SDPA unchanged.

Two kernels compute the same attention, picked per call by `use_varlen_attention(model, kernel)`:
* "auto" (the default, what the learners use): on CUDA tensors, FlexAttention, one fused
  `torch.compile`d kernel per layer over a block-sparse mask built once per forward
  (`r1v_ray.model.flex_varlen`); elsewhere, and whenever attention dropout is on (FlexAttention has
  none), the padded kernel. torch has no FlexAttention backward on CPU, so CPU training needs it.
* "padded": the samples gathered into one padded batch, one masked SDPA call per layer
  (`r1v_ray.model.padded_varlen`), on any device.
* "flex": FlexAttention on any device (compiled; on CPU forward only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from r1v_ray.model import flex_varlen, padded_varlen

NAME = "r1v_varlen_sdpa"

LAYOUT_KWARG = "r1v_shared_prompts"


@dataclass(frozen=True)
class SharedPromptLayout:
    """A packed row (batch of 1) of prompt groups: per group (prompt start, prompt length, ((completion start,
    completion length), ...)). Completion positions continue from the prompt's end; a completion attends to
    its prompt and, causally, to itself."""

    groups: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]


def _use_flex(kernel: str, query: torch.Tensor, dropout: float) -> bool:
    if kernel == "flex" and dropout:
        raise ValueError("FlexAttention has no dropout: set the LLM's attention_dropout to 0 or use kernel='padded'")
    return kernel == "flex" or (kernel == "auto" and query.device.type == "cuda" and not dropout)


class _LastBuilt:
    """One forward's layers share one mask: kept for the last position_ids tensor (unchanged since, by its
    version counter) or layout object seen, on one device and batch size."""

    def __init__(self):
        self.key: tuple | None = None
        self.value = None

    def get(self, source, device, batch: int, length: int, build):
        key = (source, getattr(source, "_version", None), device, batch, length)
        if self.key is None or self.key[0] is not source or self.key[1:] != key[1:]:
            self.key, self.value = key, build()
        return self.value


_BLOCK_MASKS = _LastBuilt()  # FlexAttention's block mask
_PADDED_LAYOUTS = _LastBuilt()  # the padded kernel's gather indices and masks


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
    mask = _BLOCK_MASKS.get(
        position_ids if layout is None else layout,
        device,
        batch,
        length,
        lambda: _block_mask(batch, length, device, position_ids, layout, compiled),
    )
    out = flex_varlen.flex_masked_attention(query, key, value, mask, scaling, compiled)
    return out.transpose(1, 2).contiguous(), None


def _padded_forward(query, key, value, dropout: float, scaling, position_ids, layout: SharedPromptLayout | None):
    """The padded kernel: [B, L, H, D] out of [B, H, L, D] queries and grouped key/value heads."""
    batch, length, device = query.shape[0], query.shape[2], query.device

    def build():
        if layout is not None:
            spans = padded_varlen.shared_prompt_spans(layout.groups)
        else:
            spans = padded_varlen.packed_spans(position_ids.expand(batch, -1))
        return padded_varlen.padded_layout(spans, batch, length, device)

    gathered = _PADDED_LAYOUTS.get(position_ids if layout is None else layout, device, batch, length, build)
    kv_groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, kv_groups), repeat_kv(value, kv_groups)
    return padded_varlen.padded_attention(query, key, value, gathered, dropout, scaling)


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
    return _padded_forward(query, key, value, dropout, scaling, position_ids, r1v_shared_prompts), None


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
KERNELS = {NAME: "auto", f"{NAME}_flex": "flex", f"{NAME}_padded": "padded"}
for _name, _kernel in KERNELS.items():
    AttentionInterface.register(_name, partial(_varlen_forward, _kernel))
    AttentionMaskInterface.register(_name, varlen_mask)


def use_varlen_attention(model, kernel: str = "auto") -> None:
    """Route the LLM's attention through the packed-row attention (the vision tower keeps its own): "auto"
    (FlexAttention on CUDA, the padded kernel elsewhere), "flex" or "padded"."""
    names = {k: n for n, k in KERNELS.items()}
    if kernel not in names:
        raise ValueError(f"use_varlen_attention: kernel must be one of {sorted(names)}, got {kernel!r}")
    model.model.language_model.config._attn_implementation = names[kernel]


def uses_varlen_attention(model) -> bool:
    """True when the LLM of `model` (or of the DeepSpeed engine wrapping it) runs this module's attention."""
    model = getattr(model, "module", model)
    return model.model.language_model.config._attn_implementation in KERNELS
