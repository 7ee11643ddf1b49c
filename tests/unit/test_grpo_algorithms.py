"""GRPO loss pieces, checked against hand computations."""

import math

import pytest
import torch

from r1v_ray.grpo.algorithms import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    kl_penalty,
    logprob_gap,
    nonzero_variance_groups,
)


def test_surrogate_clips_on_the_right_side():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))  # ratios
    mask = torch.ones(1, 4)
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([1.0]), mask, eps_low=0.2)
    # A > 0: ratio 1.5 clipped to 1.2; 0.5 kept (min picks the unclipped, smaller value)
    assert torch.allclose(loss, -torch.tensor([[1.2, 0.5, 1.1, 0.7]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([-1.0]), mask, eps_low=0.2)
    # A < 0: ratio 0.5 clipped to 0.8 (pessimistic), 1.5 kept
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1, 0.8]]))
    assert clipped.tolist() == [[0.0, 1.0, 0.0, 1.0]]


def test_decoupled_upper_clip_and_mask():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 1.25, 1.0]]))
    loss, _ = clipped_surrogate(logp, old, torch.tensor([2.0]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2, eps_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-2.56, -2.5, 0.0]]))


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + d)
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(logp, ref, "k4")


def test_aggregation_modes():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(8 / 5)
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx((1 + 4) / 2)
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_tokens=8).item() == pytest.approx(8 / 16)
    with pytest.raises(ValueError):
        aggregate(x, mask, "mean")
    # Split over two data-parallel shards with the global counts, the shards sum to the whole batch's loss.
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        whole = aggregate(x, mask, mode, max_tokens=8)
        shards = [aggregate(x[i : i + 1], mask[i : i + 1], mode, 8, total_tokens=5.0, total_seqs=2.0) for i in (0, 1)]
        assert sum(shards).item() == pytest.approx(whole.item())


def test_zero_variance_groups_and_metrics():
    keep = nonzero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert keep.tolist() == [False, True, False]
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    assert logprob_gap(torch.tensor([[0.0, -1.0]]), torch.tensor([[0.1, -1.3]]), torch.ones(1, 2)) == pytest.approx(0.2)
