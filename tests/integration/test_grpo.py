"""GRPO topology on CPU: weight sync makes rollout log-probs equal the learner's, only the thread that built
the topology may change it, a dead rollout worker is restarted and the step retried, and a new run resumes
from the last checkpoint at the exact prompt position."""

import json
import math
import os
from concurrent import futures

import pytest
import ray

from r1v_ray.config import load_config
from r1v_ray.data.synthetic import iter_rows, write_split
from r1v_ray.grpo.batch import Trajectory
from r1v_ray.grpo.rollouts import step_requests
from r1v_ray.grpo.trainer import GRPORun

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGPROB_TOL = 1e-4  # fp32 on both sides


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(**over):
    sets = {
        "grpo.num_learners": 2,
        "grpo.use_gpu": "false",
        "grpo.zero_stage": 2,
        "grpo.learning_rate": 1e-4,  # this test's own settings, not the demo's
        "grpo.loss_agg": "token_mean",
        "grpo.prompts_per_step": 4,
        "grpo.group_size": 4,
        "grpo.max_completion_tokens": 24,
        "grpo.eval_prompts": 4,
        "grpo.eval_every_steps": 100,
        "grpo.drop_zero_variance_groups": "false",
        "grpo.trainable_prefixes": "[projector, llm, lm_head]",
        "rollout.max_model_len": 512,
        **over,
    }
    return load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [f"{k}={v}" for k, v in sets.items()])


ROWS = list(iter_rows(32, seed=5))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(prompt set, held-out set) as datasets: GRPO reads its rows by position, never whole."""
    root = tmp_path_factory.mktemp("grpo_data")
    write_split(str(root / "train"), 32, seed=5)
    write_split(str(root / "test"), 4, seed=5, split="test")
    return str(root / "train"), str(root / "test")


def test_sync_makes_rollout_logprobs_equal_the_learners_and_dead_workers_restart(
    local_ray, tiny_checkpoint, data, tmp_path
):
    run = GRPORun(_cfg(), tiny_checkpoint, *data, str(tmp_path / "grpo"))
    topology, g = run.topology, run.g
    try:
        requests = step_requests(g, ROWS[:2], 2, tag=3)
        results = run.generate(requests)
        trajs = [
            Trajectory(step_requests(g, [ROWS[i]], 1, tag=0)[0], c.token_ids, c.logprobs, adv, 0.0)
            for i, res in enumerate(results)
            for c, adv in zip(res.completions, (1.0, -1.0))
        ]
        worker = topology.rollout_workers[0]
        before = ray.get(worker.sequence_logprobs.remote(trajs[0].request, trajs[0].completion_ids))
        # A real update (non-zero advantages), then the sync.
        ray.get([learner.train_step.remote(trajs[i::2]) for i, learner in enumerate(topology.learners)])
        sync = topology.sync_weights()
        assert sync["tensors"] > 0 and sync["buckets"] >= 1
        learner = ray.get(topology.learners[0].logprobs.remote(trajs))
        for traj, expected in zip(trajs, learner):
            got = ray.get(worker.sequence_logprobs.remote(traj.request, traj.completion_ids))
            assert max(abs(a - b) for a, b in zip(got, expected)) < LOGPROB_TOL
        assert max(abs(a - b) for a, b in zip(before, learner[0])) > 1e-3  # the weights really moved
        with futures.ThreadPoolExecutor(1) as other:  # only the thread that built the topology may change it
            for change in (topology.sync_weights, topology.shutdown):
                with pytest.raises(AssertionError, match="only the thread that built the topology"):
                    other.submit(change).result()

        ray.kill(worker)  # a rollout worker dies between steps
        values = run.train_step()
        assert values["rollout_restarts"] == 1 and values["trajectories"] == 16
        assert {
            "reward_mean",
            "accuracy",
            "format_rate",
            "response_length",
            "kl",
            "entropy",
            "clip_frac",
            "groups_dropped",
            "generation_s",
            "update_s",
            "sync_s",
            "logprob_gap",
        } <= set(values)
    finally:
        run.shutdown()


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_from_the_last_checkpoint(local_ray, tiny_checkpoint, data, tmp_path):
    """The first run overlaps rollouts with updates (off_policy_steps: 1) and dies right after its step-2
    checkpoint, with step 3's rollouts already drawn; the resumed run redraws exactly those prompts."""
    out = str(tmp_path / "grpo")
    cfg = {"grpo.steps": 4, "grpo.checkpoint_every_steps": 2}
    first = GRPORun(_cfg(**cfg, **{"grpo.off_policy_steps": 1}), tiny_checkpoint, *data, out)
    checkpoint = first.checkpoint

    def checkpoint_then_crash():
        checkpoint()
        assert first.rollouts.sampler.state() == {
            "epoch": 0,
            "index": 12,
        }  # step 3's prompts were drawn in the background
        raise RuntimeError("killed after the step-2 checkpoint")

    first.checkpoint = checkpoint_then_crash
    try:
        with pytest.raises(RuntimeError, match="killed"):
            first.run()
    finally:
        first.shutdown()
    with open(os.path.join(out, "checkpoints", "latest.json")) as f:
        assert json.load(f) == {"step": 2, "sampler": {"epoch": 0, "index": 8}}
    assert [m["step"] for m in _metrics(out)] == [0, 1, 2]
    second = GRPORun(_cfg(**cfg), tiny_checkpoint, *data, out)
    try:
        assert second.step == 2 and second.rollouts.sampler.state() == {"epoch": 0, "index": 8}
        assert second.model_path.endswith(os.path.join("step-2", "model"))
        result = second.run()
    finally:
        second.shutdown()
    assert [m["step"] for m in _metrics(out)] == [0, 1, 2, 3, 4]
    assert all(m["trajectories"] == 16 for m in _metrics(out)[1:])
    assert os.path.exists(os.path.join(result["model"], "model.safetensors"))
    assert [h["step"] for h in result["heldout"]] == [0, 4]  # a resumed run keeps the points before its checkpoint
    assert all(h["heldout_response_length"] > 0 for h in result["heldout"])  # the resumed point's too, from JSONL


@pytest.mark.timeout(600)  # without the collective finite check the healthy learner waits in backward forever
def test_colocated_rollout_shares_the_learner_bundles_and_a_nan_loss_stops_every_learner(
    local_ray, tiny_checkpoint, data, tmp_path
):
    run = GRPORun(
        _cfg(**{"grpo.colocate": "true", "rollout.num_workers": 2}),
        tiny_checkpoint,
        *data,
        str(tmp_path / "grpo"),
    )
    topology, g = run.topology, run.g
    try:
        learner_pg = topology.learner_pg.id.hex()
        assert [ray.get(w.placement_group_id.remote()) for w in topology.rollout_workers] == [learner_pg] * 2
        assert topology.rollout_pg is None
        values = run.train_step()
        assert values["trajectories"] == 16 and values["sync_s"] > 0

        # Two groups, one per learner; only row 0's carries a NaN advantage. Both learners stop (one raising
        # alone would leave the other in the gradient all-reduce) and nothing is applied.
        results = run.generate(step_requests(g, ROWS[:2], 2, tag=5))
        trajs = [
            Trajectory(
                step_requests(g, [ROWS[i]], 1, tag=0)[0], c.token_ids, c.logprobs, math.nan if i == 0 else 1.0, 0.0
            )
            for i, res in enumerate(results)
            for c in res.completions
        ]
        before = ray.get([learner.logprobs.remote(trajs) for learner in topology.learners])
        with pytest.raises(FloatingPointError, match="non-finite on a learner"):
            topology.learn(trajs)
        assert ray.get([learner.logprobs.remote(trajs) for learner in topology.learners]) == before
    finally:
        run.shutdown()
