"""GRPO's step loop against a stand-in topology (no Ray): with `off_policy_steps: 1` a rollout worker lost
by the background prefetch is restarted by the step loop's own thread, the prompts the failed prefetch drew
are drawn again, and no step is lost or trained twice."""

import dataclasses
import json
import threading

import pytest

from r1v_ray.config import R1VConfig
from r1v_ray.data.synthetic import write_split
from r1v_ray.engines.rollout.types import Completion, GenerationResult
from r1v_ray.grpo import trainer
from r1v_ray.grpo.topology import RolloutWorkerLost


def _completions(n: int) -> list[Completion]:
    return [Completion(str(i), [1] * (i + 1), [-0.5] * (i + 1), "stop") for i in range(n)]


class StandInTopology:
    """The GRPOTopology surface the step loop uses; it records which thread does what."""

    def __init__(self, cfg, model_path, reference_checkpoint, resume_from):
        self.model_path, self.restarts = model_path, 0
        self.lose_in_background = False  # the next generate off the owner thread loses a worker
        self.owner = threading.get_ident()
        self.generated: list[tuple[bool, list[str]]] = []  # (from the owner thread, request ids) per call
        self.changes: list[tuple[str, bool]] = []  # (what, from the owner thread)

    def generate(self, requests):
        by_owner = threading.get_ident() == self.owner
        self.generated.append((by_owner, [r.request_id for r in requests]))
        if self.lose_in_background and not by_owner:
            self.lose_in_background = False
            raise RolloutWorkerLost("a rollout worker died during generation")
        return [GenerationResult(r.request_id, completions=_completions(r.sampling.n)) for r in requests]

    def score(self, items):
        return [{"reward": float(i % 2), "accuracy": float(i % 2), "format": 1.0} for i in range(len(items))]

    def _change(self, what: str) -> None:
        self.changes.append((what, threading.get_ident() == self.owner))

    def learn(self, trajectories):
        self._change("learn")
        return {"loss": 0.0}

    def sync_weights(self):
        self._change("sync")
        return {"sync_s": 0.0}

    def restart_rollout(self, lost):
        self._change("restart")
        self.restarts += 1
        return {"sync_s": 0.0}

    def shutdown(self):
        self._change("shutdown")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "GRPOTopology", StandInTopology)
    write_split(str(tmp_path / "train"), 16, seed=1)
    write_split(str(tmp_path / "test"), 2, seed=1, split="test")
    base = R1VConfig()
    g = dataclasses.replace(
        base.grpo, prompts_per_step=2, group_size=2, steps=4, off_policy_steps=1, eval_prompts=2, ssb_capacity=0
    )
    grpo = trainer.GRPORun(
        dataclasses.replace(base, grpo=g), "init", str(tmp_path / "train"), str(tmp_path / "test"), str(tmp_path)
    )
    yield grpo
    grpo.shutdown()


def test_a_worker_lost_by_the_prefetch_is_restarted_by_the_step_loop_and_its_prompts_redrawn(run):
    topology = run.topology
    assert run.train_step()["trajectories"] == 4  # step 0 on-policy; step 1's rollouts prefetched
    topology.lose_in_background = True
    before = run.rollouts.sampler.state()  # where step 2's prefetch starts drawing
    values = run.train_step()  # trains step 1's batch; step 2's prefetch loses a worker
    assert values["rollout_restarts"] == 1 and values["trajectories"] == 4
    lost = topology.generated[-1]
    assert lost[0] is False  # the failed generate ran in the background thread
    assert run.rollouts.sampler.state() == before  # its prompts are not consumed
    assert run.train_step()["trajectories"] == 4  # step 2, collected on-policy by the step loop
    redrawn = next(ids for by_owner, ids in topology.generated[topology.generated.index(lost) + 1 :] if by_owner)
    assert redrawn == lost[1]  # the same prompts, seeds and ids as the prefetch that failed
    run.train_step()
    assert run.step == 4
    # Every change to the topology came from the thread that built it; the restart happened once.
    assert all(by_owner for _, by_owner in topology.changes)
    assert [what for what, _ in topology.changes].count("restart") == 1


class SolvesSomeRows(StandInTopology):
    """Every sample of a row in `solvable` is right; the other rows' groups are half right."""

    solvable: set[str] = set()

    def generate(self, requests):
        results = super().generate(requests)
        for req, res in zip(requests, results):  # the text carries the row id, for `score`
            res.completions = [dataclasses.replace(c, text=req.request_id) for c in res.completions]
        return results

    def save(self, path, step):
        pass

    def score(self, items):
        right = [float(text.split("@")[0] in self.solvable or i % 2) for i, (text, _, _) in enumerate(items)]
        return [{"reward": r, "accuracy": r, "format": 1.0} for r in right]


def _skipping_run(tmp_path, monkeypatch, skip: bool) -> trainer.GRPORun:
    monkeypatch.setattr(trainer, "GRPOTopology", SolvesSomeRows)
    write_split(str(tmp_path / "train"), 16, seed=1)
    write_split(str(tmp_path / "test"), 2, seed=1, split="test")
    base = R1VConfig()
    g = dataclasses.replace(
        base.grpo, prompts_per_step=2, group_size=2, steps=10, off_policy_steps=1, eval_prompts=2,
        checkpoint_every_steps=1000, skip_solved_prompts=skip,
    )  # fmt: skip
    run = trainer.GRPORun(
        dataclasses.replace(base, grpo=g), "init", str(tmp_path / "train"), str(tmp_path / "test"), str(tmp_path)
    )
    ids = [row["id"] for row in run.rollouts.rows.take(range(16))]
    SolvesSomeRows.solvable = set(ids[::2])
    return run


def _drawn_per_call(run) -> list[list[str]]:
    return [[rid.split("@")[0] for rid in ids] for _, ids in run.topology.generated]


@pytest.mark.parametrize("skip", [True, False])
def test_a_solved_prompt_is_not_drawn_again_and_the_checkpoint_keeps_the_solved_rows(tmp_path, monkeypatch, skip):
    run = _skipping_run(tmp_path, monkeypatch, skip)
    try:
        solved_counts = [run.train_step()["prompts_solved"] for _ in range(10)]
        run.checkpoint()
        calls = _drawn_per_call(run)
    finally:
        run.shutdown()
    drawn = [rid for call in calls for rid in call]
    solvable_draws = [rid for rid in drawn if rid in SolvesSomeRows.solvable]
    if not skip:  # the second epoch draws the solved rows again
        assert len(solvable_draws) > len(set(solvable_draws)) and set(solved_counts) == {0}
        return
    # Each solvable row is drawn once: it is skipped from the draw after the batch that solved it was trained on.
    assert len(solvable_draws) == len(set(solvable_draws)) > 0
    assert len(drawn) - len(solvable_draws) > 8  # the unsolved rows are drawn again, epoch after epoch
    assert solved_counts == sorted(solved_counts) and solved_counts[-1] > 0
    saved = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["sampler"]
    ids = [row["id"] for row in run.rollouts.rows.take(range(16))]
    assert {ids[i] for i in saved["solved"]} <= SolvesSomeRows.solvable and len(saved["solved"]) == solved_counts[-1]
