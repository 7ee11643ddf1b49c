"""GRPO's Ray topology: placement groups, the learner, rollout and reward actors, weight sync and restarts.

Learners live in their own placement group; rollout workers in theirs, or in the learners' bundles when
`grpo.colocate` is set. The step loop (`r1v_ray.grpo.trainer.GRPORun`) holds one `GRPOTopology`.

Threading rule: the thread that builds the topology owns it. Only the owner changes it (restarting rollout
workers, syncing weights, updating or saving the learners, shutting down); another thread, the rollout
prefetch of `grpo.off_policy_steps: 1`, may only `generate` and `score`. A rollout worker that dies during
`generate` raises `RolloutWorkerLost` in the calling thread; the owner then calls `restart_rollout`. Both
rules are checked: a change from another thread is an AssertionError, and a restart or sync waits for a
`generate` in flight (it never swaps or reloads the workers under one).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.engines.rollout.actor import create_rollout_workers, rollout_placement_group, wait_until_loaded
from r1v_ray.engines.sync import make_sync
from r1v_ray.grpo.batch import Trajectory
from r1v_ray.grpo.learner import LearnerWorker
from r1v_ray.grpo.reward import RewardWorker


class RolloutWorkerLost(RuntimeError):
    """A rollout worker died during `generate`; the topology's owner thread restarts the workers."""


def learner_shares(trajectories: list[Trajectory], n_learners: int) -> list[list[Trajectory]]:
    """Whole groups to one learner each (its prompt is then encoded once there), balanced by completion
    tokens: the largest group first, to the learner with the least load so far."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.request.request_id, []).append(t)
    shares: list[list[Trajectory]] = [[] for _ in range(n_learners)]
    load = [0] * n_learners
    for group in sorted(groups.values(), key=lambda g: -sum(len(t.completion_ids) for t in g)):
        i = load.index(min(load))
        shares[i] += group
        load[i] += sum(len(t.completion_ids) for t in group)
    return shares


class GRPOTopology:
    def __init__(self, cfg: R1VConfig, model_path: str, reference_checkpoint: str, resume_from: str | None):
        """Start the learners (loading `resume_from`, a checkpoint directory, when given), the rollout workers
        on `model_path` and the reward actor; the calling thread becomes the owner."""
        self.cfg, self.g = cfg, cfg.grpo
        self.model_path = model_path  # what restarted rollout workers load (the last checkpoint's model)
        self.restarts = 0
        self._owner = threading.get_ident()
        self._rollout_lock = threading.Lock()  # held by generate; a restart or sync waits for it
        self.sync = make_sync(self.g.weight_sync, cfg.rollout.tensor_parallel_size)
        self.learner_pg = placement_group([self._bundle()] * self.g.num_learners, strategy="PACK", name="grpo-learners")
        ray.get(self.learner_pg.ready())
        self.rollout_pg = None
        # Apart, the engines load while the learners build theirs (vLLM's start and DeepSpeed's overlap);
        # colocated, the engines load first: vLLM sizes its cache from the GPU memory it finds free.
        self.rollout_workers = self._rollout_workers(wait=self.g.colocate)
        self.learners = self._learners(reference_checkpoint)
        addr, port = ray.get(self.learners[0].address.remote())
        ray.get([learner.init.remote(addr, port) for learner in self.learners])
        if resume_from:
            ray.get([learner.load.remote(resume_from) for learner in self.learners])
        wait_until_loaded(self.rollout_workers)
        self.sync.setup(self.learners, self.rollout_workers)
        g = self.g
        self.rewarder = (
            ray.remote(RewardWorker)
            .options(num_cpus=0.5)
            .remote(g.accuracy_weight, g.format_weight, g.reward_functions)
        )

    # ------------------------------------------------------------------ set-up

    def _bundle(self) -> dict:
        """One learner's bundle; colocated, it also holds a rollout worker (learner i and worker i share it)."""
        g, rollout = self.g, self.cfg.rollout
        bundle = {"CPU": 1, **({"GPU": 1} if g.use_gpu else {}), **({g.node_resource: 1} if g.node_resource else {})}
        if g.colocate:
            if rollout.num_workers > g.num_learners or rollout.tensor_parallel_size != 1:
                raise ValueError(
                    "grpo.colocate needs rollout.num_workers <= grpo.num_learners and "
                    "rollout.tensor_parallel_size = 1 (one rollout engine per learner bundle)"
                )
            bundle["CPU"] += rollout.num_cpus_per_worker
        return bundle

    def _learners(self, reference_checkpoint: str) -> list:
        g, cfg = self.g, self.cfg
        share = 0.5 if g.colocate else 1.0  # colocated: half of the bundle's GPU each
        prefixes = g.trainable_prefixes or cfg.model.trainable_prefixes
        dtype = cfg.model.dtype if g.use_gpu else "float32"
        return [
            ray.remote(LearnerWorker)
            .options(
                num_cpus=1,
                num_gpus=share if g.use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.learner_pg, placement_group_bundle_index=i),
            )
            .remote(
                self.model_path,
                g,
                prefixes,
                i,
                g.num_learners,
                g.use_gpu,
                dtype,
                cfg.rollout.max_model_len,
                reference_checkpoint=reference_checkpoint,
            )  # fmt: skip
            for i in range(g.num_learners)
        ]

    def _rollout_workers(self, wait: bool = True) -> list:
        """Rollout engines in their own placement group, or in the learners' bundles when colocated; without
        `wait`, started but not yet loaded."""
        rollout = self.cfg.rollout
        if not self.g.colocate:
            if self.rollout_pg is None:
                self.rollout_pg = rollout_placement_group(rollout, name="grpo-rollout")
            return create_rollout_workers(self.model_path, rollout, self.cfg.model.dtype, self.rollout_pg, wait)
        shared = dataclasses.replace(
            rollout,
            num_gpus_per_worker=0.5 * rollout.num_gpus_per_worker,
            node_resource=None,
            gpu_memory_utilization=min(rollout.gpu_memory_utilization, 0.4),
        )
        return create_rollout_workers(self.model_path, shared, self.cfg.model.dtype, self.learner_pg, wait)

    def _assert_owner(self, what: str) -> None:
        assert threading.get_ident() == self._owner, (
            f"GRPOTopology.{what} called from thread {threading.current_thread().name}: only the thread that "
            "built the topology may change it (another thread may only generate and score)"
        )

    # ------------------------------------------------------------------ any thread

    def generate(self, requests: list) -> list:
        """Round-robin over the rollout workers, results in request order. A dead worker raises
        `RolloutWorkerLost` (the owner thread restarts the workers: `restart_rollout`)."""
        with self._rollout_lock:
            workers = self.rollout_workers
            shares = [requests[i :: len(workers)] for i in range(len(workers))]
            try:
                parts = ray.get([w.generate.remote(s) for w, s in zip(workers, shares) if s])
            except ray.exceptions.RayActorError as exc:
                raise RolloutWorkerLost(f"a rollout worker died during generation: {exc}") from exc
        by_id = {r.request_id: r for part in parts for r in part}
        return [by_id[r.request_id] for r in requests]

    def score(self, items: list[tuple]) -> list[dict]:
        """(completion text, answer, choices) items scored by the reward actor."""
        return ray.get(self.rewarder.score.remote(items))

    # ------------------------------------------------------------------ the owner thread only

    def restart_rollout(self, lost: RolloutWorkerLost) -> dict:
        """Replace every rollout worker and bring the new ones (they load `model_path`) to the learners'
        weights; the sync's figures. Past `grpo.max_rollout_restarts` the worker's error is raised."""
        self._assert_owner("restart_rollout")
        self.restarts += 1
        if self.restarts > self.g.max_rollout_restarts:
            raise lost.__cause__ or lost
        with self._rollout_lock:
            for w in self.rollout_workers:
                ray.kill(w)
            self.rollout_workers = self._rollout_workers()
            self.sync.setup(self.learners, self.rollout_workers)
            return self._sync_locked()

    def sync_weights(self) -> dict:
        """Learners' trainable weights into every rollout worker (never in the middle of a `generate`)."""
        self._assert_owner("sync_weights")
        with self._rollout_lock:
            return self._sync_locked()

    def _sync_locked(self) -> dict:
        return self.sync.sync(self.learners, self.rollout_workers, self.g.sync_bucket_mb << 20)

    def learn(self, trajectories: list[Trajectory]) -> dict:
        """One update on every learner (their `learner_shares` in parallel); the learners' mean statistics."""
        self._assert_owner("learn")
        shares = learner_shares(trajectories, len(self.learners))
        # Every learner must take part in the collectives: an empty share runs a zero-weight copy.
        stats = ray.get(
            [
                learner.train_step.remote(s or trajectories[:1], padding=not s)
                for learner, s in zip(self.learners, shares)
            ]
        )
        real = [st for st, share in zip(stats, shares) if share]  # a padding copy's entropy/KL are not the batch's
        out = {k: statistics.fmean(st[k] for st in real) for k in real[0]}
        out["loss"] = sum(st["loss"] for st in stats) / len(stats)  # rank losses are world x their share of the total
        return out

    def save(self, path: str, step: int) -> None:
        """Every learner's part of the checkpoint at `path`; rollout workers restarted later load its model."""
        self._assert_owner("save")
        ray.get([learner.save.remote(path, step) for learner in self.learners])
        self.model_path = store.join(path, "model")

    def shutdown(self) -> None:
        self._assert_owner("shutdown")
        for actor in self.rollout_workers + self.learners + [self.rewarder]:
            ray.kill(actor)
        for pg in (self.learner_pg, self.rollout_pg):
            if pg is not None:
                remove_placement_group(pg)
