"""The packed-row attention off CUDA: every sample gathered into one padded batch, one SDPA call per layer.

A packed row (SFT) or a shared-prompt row (GRPO's learner) is a list of samples, each with its own queries
("own" tokens, attended causally) and, for a GRPO completion, a prefix it sees whole (its group's prompt).
The samples' queries, keys and values are gathered from the flattened row into [samples, heads, tokens, dim]
tensors (index_select: one gather forward, one scatter-add backward), attended in one masked SDPA call, and
the outputs gathered back to the row's order. Samples with a prefix and samples without go in two batches, so
a prompt's padding does not widen every completion's keys.

A per-sample loop of SDPA calls computes the same, but on CPU its cost was the slicing, not the attention:
each of the tiny model's ~70 slices per layer allocated and zero-filled a gradient the size of the whole row
in backward (26% of a GRPO update, measured with torch.profiler). The index tensors are built once per
forward (numpy) and shared by the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# (batch row, prefix start, prefix length, own start, own length) of one sample, in row positions
Span = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class Bucket:
    """Samples attended in one SDPA call: where their queries and keys lie in the flattened row, and which keys
    each query sees. Padding slots point at token 0: masked keys weigh 0 and padding queries' outputs are
    never read, so neither adds to an output or a gradient."""

    q_idx: torch.Tensor  # [S * Q] flattened-row index of each query slot
    kv_idx: torch.Tensor  # [S * K] of each key slot: the prefix (padded to the bucket's longest), then the own tokens
    mask: torch.Tensor  # [S, 1, Q, K] bool
    shape: tuple[int, int, int]  # (S, Q, K)


@dataclass(frozen=True)
class PaddedLayout:
    buckets: tuple[Bucket, ...]
    out_idx: torch.Tensor  # [B * L]: each row token's slot in the buckets' outputs, concatenated


def _bucket(spans: list[Span], length: int, first_slot: int, out_idx: np.ndarray, device) -> Bucket:
    prefix = max(s[2] for s in spans)
    own = max(s[4] for s in spans)
    q_idx = np.zeros((len(spans), own), dtype=np.int64)
    kv_idx = np.zeros((len(spans), prefix + own), dtype=np.int64)
    mask = np.zeros((len(spans), own, prefix + own), dtype=bool)
    causal = np.tril(np.ones((own, own), dtype=bool))
    for s, (b, p_start, p_len, o_start, o_len) in enumerate(spans):
        base = b * length
        q_idx[s, :o_len] = np.arange(base + o_start, base + o_start + o_len)
        kv_idx[s, :p_len] = np.arange(base + p_start, base + p_start + p_len)
        kv_idx[s, prefix : prefix + o_len] = q_idx[s, :o_len]
        mask[s, :o_len, :p_len] = True
        mask[s, :o_len, prefix : prefix + o_len] = causal[:o_len, :o_len]
        mask[s, o_len:, prefix] = True  # padding queries see one real key: no empty row, no NaN (output dropped)
        out_idx[base + o_start : base + o_start + o_len] = first_slot + s * own + np.arange(o_len)
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return Bucket(
        as_tensor(q_idx.reshape(-1)), as_tensor(kv_idx.reshape(-1)), as_tensor(mask[:, None]),
        (len(spans), own, prefix + own),
    )  # fmt: skip


def padded_layout(spans: list[Span], batch: int, length: int, device) -> PaddedLayout:
    """The gather indices and masks of `spans`, which must cover every token of the [batch, length] row once."""
    spans = [s for s in spans if s[4] > 0]
    out_idx = np.full(batch * length, -1, dtype=np.int64)
    buckets, slot = [], 0
    for part in ([s for s in spans if not s[2]], [s for s in spans if s[2]]):
        if part:
            buckets.append(_bucket(part, length, slot, out_idx, device))
            slot += buckets[-1].shape[0] * buckets[-1].shape[1]
    missing = np.flatnonzero(out_idx < 0)
    if len(missing):
        raise ValueError(
            f"packed-row attention: {len(missing)} token(s) of the row (first: flat index {missing[0]}) belong to "
            "no sample; the layout must cover every token (pad tails count as a sample)"
        )
    return PaddedLayout(tuple(buckets), torch.from_numpy(out_idx).to(device))


def packed_spans(position_ids: torch.Tensor) -> list[Span]:
    """Samples of packed rows: a new one starts wherever the position is 0."""
    spans = []
    for b, row in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        spans += [(b, 0, 0, s, e - s) for s, e in zip(starts, starts[1:] + [len(row)])]
    return spans


def shared_prompt_spans(groups) -> list[Span]:
    """Samples of a shared-prompt row (`SharedPromptLayout.groups`): each prompt, then each completion with its
    prompt as prefix."""
    spans = []
    for p_start, p_len, completions in groups:
        spans.append((0, 0, 0, p_start, p_len))
        spans += [(0, p_start, p_len, c_start, c_len) for c_start, c_len in completions]
    return spans


def padded_attention(query, key, value, layout: PaddedLayout, dropout: float, scaling) -> torch.Tensor:
    """[B, H, L, D] query and (head-repeated) key/value -> the attention output as [B, L, H, D]."""
    b, h, length, d = query.shape

    def flat(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [B*L, H, D]
        return x.transpose(1, 2).reshape(b * length, h, d)

    q, k, v = flat(query), flat(key), flat(value)
    outs = []
    for bucket in layout.buckets:
        s, nq, nk = bucket.shape
        attn = F.scaled_dot_product_attention(
            q.index_select(0, bucket.q_idx).reshape(s, nq, h, d).transpose(1, 2),
            k.index_select(0, bucket.kv_idx).reshape(s, nk, h, d).transpose(1, 2),
            v.index_select(0, bucket.kv_idx).reshape(s, nk, h, d).transpose(1, 2),
            attn_mask=bucket.mask,
            dropout_p=dropout,
            scale=scaling,
        )
        outs.append(attn.transpose(1, 2).reshape(s * nq, h, d))
    return torch.cat(outs).index_select(0, layout.out_idx).reshape(b, length, h, d)
