"""The GRPO learner applies its options: the KL term against a reference model, inner epochs, the decoupled
upper clip, each loss aggregation, truncated importance sampling and GSPO's sequence-level ratio. One real learner (DeepSpeed, gloo, world 1) in this process; every
expected loss is computed by hand from the learner's own log-probs just before its update, so each test fails
when the learner ignores the option (the values differ by far more than the tolerance)."""

import dataclasses
import math
import os
import random
import socket

import pytest
import torch

from r1v_ray.config import GRPOConfig
from r1v_ray.data.synthetic import iter_rows
from r1v_ray.engines.rollout.types import PromptBuilder
from r1v_ray.grpo.batch import Trajectory, completion_logprobs, encode
from r1v_ray.grpo.learner import LearnerWorker
from r1v_ray.model import load_checkpoint, save_checkpoint
from r1v_ray.model.varlen import use_varlen_attention
from r1v_ray.prompts import paper_request

pytestmark = [pytest.mark.slow]
LENGTHS = (3, 7, 12, 5)  # two groups of two completions; 27 tokens
ADVANTAGES = (1.0, -1.0, 1.0, 1.0)
TOL = 1e-4


@pytest.fixture(scope="module")
def reference_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The KL term's reference: the initial model with its LM head moved, so the KL is non-zero at once."""
    model, processor = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        head = model.get_output_embeddings().weight
        head.add_(0.05 * torch.randn(head.shape, generator=generator))
    return save_checkpoint(model, processor, str(tmp_path_factory.mktemp("ref") / "r1v"), meta={"stage": "test"})


@pytest.fixture(scope="module")
def learner(tiny_checkpoint, reference_checkpoint):
    saved = dict(os.environ)
    cfg = GRPOConfig(
        learning_rate=1e-3, kl_coef=0.5, zero_stage=2, use_gpu=False, num_learners=1, max_completion_tokens=16
    )
    worker = LearnerWorker(
        tiny_checkpoint, cfg, ["projector", "llm", "lm_head"], 0, 1, max_model_len=1024,
        reference_checkpoint=reference_checkpoint,
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.distributed as dist

    if dist.is_initialized():  # an in-process vLLM engine of an earlier test still holds the default group
        from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    worker.init("127.0.0.1", port)
    yield worker
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def trajectories():
    rng = random.Random(0)
    out = []
    for row in iter_rows(2, seed=2):
        request = paper_request(row, 2, 16, 1.0, 1.0, seed=0)
        for _ in range(2):
            out.append(Trajectory(request, [], [], 0.0, 0.0))
    for traj, n, adv in zip(out, LENGTHS, ADVANTAGES):
        traj.completion_ids = [rng.randrange(300, 600) for _ in range(n)]
        traj.advantage = adv
    return out


def _step(learner, trajectories, log_ratio=0.0, advantages=ADVANTAGES, **cfg) -> dict:
    """One train_step with `cfg` over the defaults (no KL unless asked), rollout log-probs set so that every
    token's ratio to them is exp(log_ratio) under the learner's current weights (`log_ratio`: a number, or
    a function of the token's position)."""
    learner.cfg = dataclasses.replace(
        learner.cfg,
        **{
            "kl_coef": 0.0,
            "inner_epochs": 1,
            "policy_ratio": "token",
            "tis_cap": None,
            "old_logprobs": "rollout",
            **cfg,
        },
    )
    shift = log_ratio if callable(log_ratio) else (lambda _: log_ratio)
    current = learner.logprobs(trajectories)
    trajs = [
        dataclasses.replace(t, rollout_logprobs=[lp - shift(j) for j, lp in enumerate(cur)], advantage=a)
        for t, cur, a in zip(trajectories, current, advantages)
    ]
    return learner.train_step(trajs)


def test_each_loss_aggregation_is_applied(learner, trajectories):
    # Ratio 1: every token's loss is -A. Lengths 3, 7, 12, 5 with A = 1, -1, 1, 1.
    expected = {
        "token_mean": -(3 - 7 + 12 + 5) / 27,
        "seq_mean_token_mean": -(1 - 1 + 1 + 1) / 4,
        "seq_mean_token_sum_norm": -(3 - 7 + 12 + 5) / (4 * 16),  # max_completion_tokens 16
    }
    for mode, value in expected.items():
        assert _step(learner, trajectories, loss_agg=mode)["loss"] == pytest.approx(value, abs=TOL), mode


def test_the_decoupled_upper_clip_is_applied(learner, trajectories):
    # Every ratio 1.25 with A = +1: clip_eps_high 0.28 keeps it (loss -1.25), the symmetric 0.2 clips to 1.2.
    up = math.log(1.25)
    stats = _step(learner, trajectories, up, (1.0,) * 4, clip_eps=0.2, clip_eps_high=0.28, loss_agg="token_mean")
    assert stats["loss"] == pytest.approx(-1.25, abs=TOL) and stats["clip_frac"] == 0.0
    stats = _step(learner, trajectories, up, (1.0,) * 4, clip_eps=0.2, clip_eps_high=None, loss_agg="token_mean")
    assert stats["loss"] == pytest.approx(-1.2, abs=TOL) and stats["clip_frac"] == 1.0


def test_the_kl_term_uses_the_reference_model(learner, trajectories, reference_checkpoint):
    ref, processor = load_checkpoint(reference_checkpoint)
    use_varlen_attention(ref)
    with torch.no_grad():
        groups = encode(trajectories, processor, PromptBuilder(processor, 1024))
        ref_logp, mask, _ = completion_logprobs(ref, groups)
    policy = learner.logprobs(trajectories)
    # k3 with r' = ref / pi, token mean over the batch; A = 0, so the loss is kl_coef x KL alone.
    k3 = [
        math.exp(r - p) - 1 - (r - p)
        for row, m, pol in zip(ref_logp.tolist(), mask.tolist(), policy)
        for r, p in zip(row[: int(sum(m))], pol)
    ]
    kl = sum(k3) / len(k3)
    assert kl > 0.01  # the reference really differs from the policy
    stats = _step(learner, trajectories, 0.0, (0.0,) * 4, kl_coef=0.5, kl_estimator="k3", loss_agg="token_mean")
    assert stats["kl"] == pytest.approx(kl, rel=1e-3) and stats["loss"] == pytest.approx(0.5 * kl, rel=1e-3)


def test_inner_epochs_each_update_against_the_rollout_logprobs(learner, trajectories):
    steps = learner.engine.global_steps
    first_epoch = -(3 - 7 + 12 + 5) / 27  # ratio 1 before the first update (token_mean)
    stats = _step(learner, trajectories, inner_epochs=3, loss_agg="token_mean")
    assert learner.engine.global_steps == steps + 3
    # The last epoch's loss is taken with twice-updated weights against the same rollout log-probs: the ratio
    # has moved off 1, and the update went the way the advantages point (the loss fell).
    assert stats["loss"] < first_epoch - 1e-3


def test_truncated_importance_sampling_is_applied(learner, trajectories):
    # The learner finds every token twice as likely as the rollout engine did. With tis_cap 1.5 the ratio is
    # taken against the learner's own log-probs (1) and each token weighs min(2, 1.5): loss -1.5 for A = +1.
    # Without it the ratio 2 is clipped at 1.2.
    up = math.log(2.0)
    stats = _step(learner, trajectories, up, (1.0,) * 4, tis_cap=1.5, clip_eps=0.2, loss_agg="token_mean")
    assert stats["loss"] == pytest.approx(-1.5, abs=TOL) and stats["clip_frac"] == 0.0
    stats = _step(learner, trajectories, up, (1.0,) * 4, clip_eps=0.2, clip_eps_high=None, loss_agg="token_mean")
    assert stats["loss"] == pytest.approx(-1.2, abs=TOL)


def test_learner_old_logprobs_take_the_ratio_against_the_learner(learner, trajectories):
    # The rollout log-probs say every token is half as likely as the learner finds it: against them the ratio 2
    # is clipped at 1.2 (A = +1). With old_logprobs=learner they are not read (nor needed): ratio 1, loss -1.
    up = math.log(2.0)
    stats = _step(learner, trajectories, up, (1.0,) * 4, clip_eps=0.2, clip_eps_high=None, loss_agg="token_mean")
    assert stats["loss"] == pytest.approx(-1.2, abs=TOL) and stats["clip_frac"] == 1.0
    stats = _step(
        learner,
        trajectories,
        up,
        (1.0,) * 4,
        old_logprobs="learner",
        clip_eps=0.2,
        clip_eps_high=None,
        loss_agg="token_mean",
    )
    assert stats["loss"] == pytest.approx(-1.0, abs=TOL) and stats["clip_frac"] == 0.0
    assert "logprob_gap" not in stats  # nothing measured it
    without = [dataclasses.replace(t, rollout_logprobs=[], advantage=1.0) for t in trajectories]
    assert learner.train_step(without)["loss"] == pytest.approx(-1.0, abs=TOL)


def test_the_sequence_level_ratio_is_applied(learner, trajectories):
    # Token log-ratios alternate +0.3, -0.3 from the first token: token-level PPO clips the 1.35s to 1.2 and
    # keeps the 0.74s; GSPO takes one ratio per sequence, exp(mean), which is 1 for even lengths and
    # exp(0.3 / L) for odd L (3, 7, 5 here; the 1.1 of L = 3 is inside the 0.2 clip range).
    def alternating(j):
        return 0.3 if j % 2 == 0 else -0.3

    seq = sum(n * min(math.exp((0.3 if n % 2 else 0.0) / n), 1.2) for n in LENGTHS) / 27
    token = sum((n + 1) // 2 * 1.2 + n // 2 * math.exp(-0.3) for n in LENGTHS) / 27
    ones = (1.0,) * 4
    stats = _step(
        learner,
        trajectories,
        alternating,
        ones,
        policy_ratio="sequence",
        clip_eps=0.2,
        clip_eps_high=None,
        loss_agg="token_mean",
    )
    assert stats["loss"] == pytest.approx(-seq, abs=TOL)
    stats = _step(
        learner,
        trajectories,
        alternating,
        ones,
        policy_ratio="token",
        clip_eps=0.2,
        clip_eps_high=None,
        loss_agg="token_mean",
    )
    assert stats["loss"] == pytest.approx(-token, abs=TOL)
