"""SFT samples: assistant-only labels, packing equivalence (with the varlen attention), bins, length limit."""

import pytest
import torch

import r1v_ray.model.varlen as varlen
from r1v_ray.data.synthetic import iter_rows
from r1v_ray.data.validate import RowError
from r1v_ray.model import load_checkpoint
from r1v_ray.sft.samples import IGNORE, bins, encode_sample, pack, pad_collate, sft_messages, token_loss_sum


@pytest.fixture(scope="module")
def model_and_samples(tiny_checkpoint):
    model, processor = load_checkpoint(tiny_checkpoint)
    rows = list(iter_rows(5, seed=0))
    return model, processor, rows, [encode_sample(r, processor, 2048) for r in rows]


def test_labels_cover_the_assistant_turn_only(model_and_samples):
    _, processor, rows, samples = model_and_samples
    for row, s in zip(rows, samples):
        labelled = processor.tokenizer.decode([t for t in s["labels"] if t != IGNORE])
        assert labelled.startswith("<think>\n" + row["rationale"]) and labelled.endswith(
            f"Answer: \\boxed{{{row['answer']}}}<|im_end|>"
        )
        first = next(i for i, t in enumerate(s["labels"]) if t != IGNORE)
        assert processor.tokenizer.decode(s["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    assert sft_messages({**rows[0], "think": "t", "response": "r"})[1]["content"] == "<think>\nt\n</think>\n\nr"


def test_packed_loss_equals_padded_and_per_sample(model_and_samples, monkeypatch):
    model, _, _, samples = model_and_samples
    with torch.no_grad():
        singles = [token_loss_sum(model, pack([s])) for s in samples]
        padded = token_loss_sum(model, pad_collate(samples, 0))
        dense_packed = token_loss_sum(model, pack(samples))  # SDPA with the block-diagonal mask
        calls = []
        original = varlen.padded_varlen.padded_attention
        monkeypatch.setattr(
            varlen.padded_varlen, "padded_attention", lambda *a, **k: calls.append(a[3]) or original(*a, **k)
        )
        varlen.use_varlen_attention(model)
        try:
            varlen_packed = token_loss_sum(model, pack(samples))
            binned = token_loss_sum(model, pack(samples, capacity=450, pad_id=0))
        finally:
            model.model.language_model.config._attn_implementation = "sdpa"
    n_layers = model.config.text_config.num_hidden_layers
    assert len(calls) == 2 * n_layers  # the packed-row kernel ran in every layer of both packed forwards
    assert sum(b.shape[0] for b in calls[0].buckets) == len(samples)  # one attended sample each
    expected = sum(x[0] for x in singles)
    for loss, n in (padded, dense_packed, varlen_packed, binned):
        assert n == sum(x[1] for x in singles)
        assert torch.allclose(loss, expected, rtol=1e-4)


def test_bins_keep_samples_whole(model_and_samples):
    _, _, _, samples = model_and_samples
    rows = bins(samples, 450)
    assert sorted(id(s) for r in rows for s in r) == sorted(id(s) for s in samples)
    assert all(sum(len(s["input_ids"]) for s in r) <= 450 or len(r) == 1 for r in rows)


def test_too_long_rows_are_refused(model_and_samples):
    _, processor, rows, _ = model_and_samples
    with pytest.raises(RowError, match="too long"):
        encode_sample(rows[0], processor, 50)
