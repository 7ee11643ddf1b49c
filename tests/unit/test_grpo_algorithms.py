"""GRPO loss pieces, checked against hand computations."""

import math

import pytest
import torch

from r1v_ray.engines.rollout.types import GenerationRequest
from r1v_ray.grpo.algorithms import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    kl_penalty,
    logprob_gap,
    nonzero_variance_groups,
    sequence_clipped_surrogate,
    ssb_evict,
    ssb_keep,
    ssb_replay,
    truncated_is_weights,
)
from r1v_ray.grpo.batch import Trajectory
from r1v_ray.grpo.sample_buffer import SelectiveSampleBuffer, fill_step


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


def test_gspo_takes_one_ratio_per_sequence():
    # Sequence 0: token log-ratios (log 2, 0) -> s = exp(log 2 / 2) = 1.41421, clipped to 1.2 for A > 0.
    # Sequence 1: (log 0.5, 0) and a masked third token -> s = 0.70711; A > 0 keeps it (min picks 0.707).
    old = torch.zeros(2, 3)
    logp = torch.tensor([[math.log(2.0), 0.0, 0.0], [math.log(0.5), 0.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss, clipped = sequence_clipped_surrogate(logp, old, torch.tensor([1.0, 1.0]), mask, 0.2)
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.2, 0.0], [-0.70711, -0.70711, 0.0]]), atol=1e-5)
    assert clipped.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    # Per token the value is s_i, each token's gradient s_i (GSPO-token, eq. 13); clipped and masked: none.
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [-0.70711, -0.70711, 0.0]]), atol=1e-5)
    # A < 0 on sequence 1: the pessimistic side clips 0.707 up to 0.8.
    loss, clipped = sequence_clipped_surrogate(logp.detach(), old, torch.tensor([1.0, -1.0]), mask, 0.2)
    assert torch.allclose(loss[1], torch.tensor([0.8, 0.8, 0.0])) and clipped[1].tolist() == [1.0, 1.0, 0.0]
    # Token-level PPO on the same input differs: its tokens keep their own ratios 0.5 and 1.0.
    token_loss, _ = clipped_surrogate(logp.detach(), old, torch.tensor([1.0, 1.0]), mask, 0.2)
    assert torch.allclose(token_loss[1], torch.tensor([-0.5, -1.0, 0.0]))


def test_truncated_importance_weights():
    proximal = torch.log(torch.tensor([[0.5, 0.9, 0.3]])).requires_grad_()
    rollout = torch.log(torch.tensor([[0.25, 0.9, 0.6]]))
    w = truncated_is_weights(proximal, rollout, torch.tensor([[1.0, 1.0, 0.0]]), cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 1.0, 0.0]]))  # 2.0 truncated at the cap; masked token 0
    assert not w.requires_grad  # a weight, not a path for the gradient
    w = truncated_is_weights(proximal, rollout, torch.ones(1, 3), cap=3.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.5]]))
    with pytest.raises(ValueError, match="tis_cap"):
        truncated_is_weights(proximal, rollout, torch.ones(1, 3), cap=0.0)


def test_selective_sample_buffer_choices():
    assert ssb_keep(torch.tensor([0.5, -1.2, 0.0, 0.3]), 0.5).tolist() == [True, True, False, False]
    assert ssb_keep(torch.tensor([0.5, -1.2, 0.0, 0.3]), 0.0).tolist() == [True, True, False, True]
    take, stay = ssb_replay(torch.tensor([0.6, -1.5, 0.9, 1.5]), 2)  # |A| 1.5 twice: the earlier first
    assert take.tolist() == [1, 3] and stay.tolist() == [0, 2]
    take, stay = ssb_replay(torch.tensor([0.6, -1.5]), 5)
    assert take.tolist() == [0, 1] and stay.tolist() == []
    # Over capacity the largest |A| stay; between the two 0.9s the newer (index 4) wins.
    assert ssb_evict(torch.tensor([0.6, -1.5, 0.9, 1.5, 0.9]), 3).tolist() == [1, 3, 4]
    assert ssb_evict(torch.tensor([0.6, -1.5]), 3).tolist() == [0, 1]


def _traj(advantage: float) -> Trajectory:
    return Trajectory(GenerationRequest(messages=[]), [1], [-0.1], advantage, 0.0)


def test_selective_sample_buffer_fills_the_slots_of_zero_variance_groups():
    buffer = SelectiveSampleBuffer(capacity=3, min_abs_advantage=0.5)
    first = [_traj(a) for a in (0.2, 1.0, -0.7, 0.6)]
    assert fill_step(buffer, first, batch_size=4) == first  # a full batch replays nothing
    assert [t.advantage for t in buffer.items] == [1.0, -0.7, 0.6]  # |A| 0.2 is below the threshold
    # The next step kept only 2 of its 4 slots (a zero-variance group dropped): the two largest |A| fill them,
    # and that step's own 2.0 enters the buffer, pushing out nothing (capacity 3 after the replay).
    second = [_traj(2.0), _traj(-2.0)]
    batch = fill_step(buffer, second, batch_size=4)
    assert batch[:2] == second and [t.advantage for t in batch[2:]] == [1.0, -0.7]
    assert [t.advantage for t in buffer.items] == [0.6, 2.0, -2.0]
    buffer.add([_traj(0.9)])  # over capacity: the smallest |A| (0.6) leaves
    assert [t.advantage for t in buffer.items] == [2.0, -2.0, 0.9]
    assert fill_step(SelectiveSampleBuffer(0, 0.5), second, 4) == second  # capacity 0: off
