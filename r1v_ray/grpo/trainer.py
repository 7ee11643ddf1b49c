"""The GRPO driver: rollout actors -> reward actors -> group advantages -> learner actors -> weight sync.

Rollout workers and learners live in separate placement groups; every step's
time is split into generation / reward / update / sync. With `grpo.off_policy_steps: 1`
the next step's rollouts are generated while the learners update. Checkpoints every k
steps hold the learners' DeepSpeed state, an HF checkpoint and the sampler
position, and a restarted job resumes from the newest one.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from concurrent import futures

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import RowReader
from r1v_ray.engines.rollout.actor import create_rollout_workers, rollout_placement_group
from r1v_ray.engines.sync import make_sync
from r1v_ray.grpo.advantages import group_advantages
from r1v_ray.grpo.algorithms import nonzero_variance_groups
from r1v_ray.grpo.batch import Trajectory
from r1v_ray.grpo.learner import LearnerWorker
from r1v_ray.grpo.reward import RewardWorker
from r1v_ray.grpo.sample_buffer import SelectiveSampleBuffer, fill_step
from r1v_ray.grpo.sampler import PromptSampler
from r1v_ray.metrics import StageMetrics, read_jsonl, truncate_after
from r1v_ray.prompts import paper_request, row_choices
from r1v_ray.run_dir import LATEST, METRICS, checkpoint_step


@dataclasses.dataclass
class Rollouts:
    """One step's training batch and what it took to make it."""

    sampler_before: dict  # the sampler position before these prompts were drawn
    trajectories: list[Trajectory] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    scores: list[dict] = dataclasses.field(default_factory=list)
    groups_dropped: int = 0
    replayed: int = 0  # trajectories replayed from the Selective Sample Buffer into dropped groups' slots
    rejected: int = 0
    generation_s: float = 0.0
    reward_s: float = 0.0


class GRPORun:
    def __init__(self, cfg: R1VConfig, init_checkpoint: str, data_uri: str, eval_uri: str, out_dir: str):
        """Prompts are rows of `data_uri`, read by position a step at a time (never the whole set); the
        held-out reward uses the first `grpo.eval_prompts` rows of `eval_uri`."""
        self.cfg, self.g, self.out = cfg, cfg.grpo, out_dir
        self.rows = RowReader(data_uri)
        if len(self.rows) < self.g.prompts_per_step:
            raise ValueError(
                f"GRPO needs at least grpo.prompts_per_step={self.g.prompts_per_step} distinct prompts; "
                f"{data_uri} has {len(self.rows)} (lower grpo.tau or grpo.prompts_per_step)"
            )
        eval_reader = RowReader(eval_uri)
        self.eval_rows = eval_reader.take(range(min(self.g.eval_prompts, len(eval_reader))))
        self.ckpt_dir = store.join(out_dir, "checkpoints")
        latest = self._latest()
        self.step = latest["step"] if latest else 0
        self.sampler = PromptSampler(len(self.rows), self.g.seed, **(latest["sampler"] if latest else {}))
        self.model_path = checkpoint_step(self.ckpt_dir, self.step, "model") if latest else init_checkpoint
        if latest:
            print(f"[grpo] resuming at step {self.step} from {checkpoint_step(self.ckpt_dir, self.step)}")
        self.init_checkpoint = init_checkpoint
        self.metrics = StageMetrics("grpo", store.join(out_dir, METRICS))
        if latest:
            truncate_after(self.metrics.path, self.step)
        else:
            store.remove(self.metrics.path)
        self.sync = make_sync(self.g.weight_sync, cfg.rollout.tensor_parallel_size)
        self.restarts = 0
        self.buffer = SelectiveSampleBuffer(self.g.ssb_capacity, self.g.ssb_min_abs_advantage)
        self._background = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-rollouts")
        self._prefetched: futures.Future | None = None  # next step's rollouts (off_policy_steps: 1)
        self._start_actors(latest is not None)

    # ------------------------------------------------------------------ set-up

    def _latest(self) -> dict | None:
        return store.read_json(store.join(self.ckpt_dir, LATEST), None)

    def _start_actors(self, resume: bool) -> None:
        g, cfg = self.g, self.cfg
        bundle = {"CPU": 1, **({"GPU": 1} if g.use_gpu else {}), **({g.node_resource: 1} if g.node_resource else {})}
        share = 1.0
        if g.colocate:  # learner i and rollout worker i share bundle i (and its GPU, half each)
            if cfg.rollout.num_workers > g.num_learners or cfg.rollout.tensor_parallel_size != 1:
                raise ValueError(
                    "grpo.colocate needs rollout.num_workers <= grpo.num_learners and "
                    "rollout.tensor_parallel_size = 1 (one rollout engine per learner bundle)"
                )
            bundle["CPU"] += cfg.rollout.num_cpus_per_worker
            share = 0.5
        self.learner_pg = placement_group([bundle] * g.num_learners, strategy="PACK", name="grpo-learners")
        ray.get(self.learner_pg.ready())
        self.rollout_pg = None
        self.rollout_workers = self._rollout_workers()
        prefixes = g.trainable_prefixes or cfg.model.trainable_prefixes
        dtype = cfg.model.dtype if g.use_gpu else "float32"
        self.learners = [
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
                reference_checkpoint=self.init_checkpoint,
            )  # fmt: skip
            for i in range(g.num_learners)
        ]
        addr, port = ray.get(self.learners[0].address.remote())
        ray.get([learner.init.remote(addr, port) for learner in self.learners])
        if resume:
            ray.get([learner.load.remote(checkpoint_step(self.ckpt_dir, self.step)) for learner in self.learners])
        self.sync.setup(self.learners, self.rollout_workers)
        self.rewarder = (
            ray.remote(RewardWorker)
            .options(num_cpus=0.5)
            .remote(g.accuracy_weight, g.format_weight, g.reward_functions)
        )

    def _rollout_workers(self) -> list:
        """Rollout engines in their own placement group, or in the learners' bundles when colocated."""
        rollout = self.cfg.rollout
        if not self.g.colocate:
            if self.rollout_pg is None:
                self.rollout_pg = rollout_placement_group(rollout, name="grpo-rollout")
            return create_rollout_workers(self.model_path, rollout, self.cfg.model.dtype, pg=self.rollout_pg)
        shared = dataclasses.replace(
            rollout,
            num_gpus_per_worker=0.5 * rollout.num_gpus_per_worker,
            node_resource=None,
            gpu_memory_utilization=min(rollout.gpu_memory_utilization, 0.4),
        )
        return create_rollout_workers(self.model_path, shared, self.cfg.model.dtype, pg=self.learner_pg)

    def shutdown(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=True)
        for actor in self.rollout_workers + self.learners + [self.rewarder]:
            ray.kill(actor)
        for pg in (self.learner_pg, self.rollout_pg):
            if pg is not None:
                remove_placement_group(pg)

    # ------------------------------------------------------------------ pieces of a step

    def _requests(self, rows: list[dict], n: int, tag: int) -> list:
        """One request per row, seeded by (tag, position); ids unique per call (row ids need not be unique)."""
        out = []
        for k, row in enumerate(rows):
            req = paper_request(
                row,
                n,
                self.g.max_completion_tokens,
                self.g.temperature,
                self.g.top_p,
                seed=self.g.seed * 1_000_003 + tag * 10_007 + k,
            )
            req.sampling.logprobs = True
            req.request_id = f"{req.request_id}@{tag}.{k}"
            out.append(req)
        return out

    def generate(self, requests: list) -> list:
        """Round-robin over rollout workers; a dead worker is restarted with the current weights and retried."""
        while True:
            shares = [requests[i :: len(self.rollout_workers)] for i in range(len(self.rollout_workers))]
            try:
                parts = ray.get([w.generate.remote(s) for w, s in zip(self.rollout_workers, shares) if s])
                break
            except ray.exceptions.RayActorError:
                self.restarts += 1
                if self.restarts > self.g.max_rollout_restarts:
                    raise
                self._restart_rollout()
        by_id = {r.request_id: r for part in parts for r in part}
        return [by_id[r.request_id] for r in requests]

    def _restart_rollout(self) -> None:
        for w in self.rollout_workers:
            ray.kill(w)
        self.rollout_workers = self._rollout_workers()
        self.sync.setup(self.learners, self.rollout_workers)
        self._sync()  # the new workers load the last checkpoint; bring them to the learners' weights

    def _sync(self) -> dict:
        return self.sync.sync(self.learners, self.rollout_workers, self.g.sync_bucket_mb << 20)

    def _score(self, rows: list[dict], results: list) -> list[list[dict]]:
        items, shape = [], []
        for row, res in zip(rows, results):
            choices = row_choices(row)
            items += [(c.text, row["answer"], choices) for c in res.completions]
            shape.append(len(res.completions))
        flat = ray.get(self.rewarder.score.remote(items))
        out, k = [], 0
        for n in shape:
            out.append(flat[k : k + n])
            k += n
        return out

    def held_out_reward(self) -> dict:
        results = self.generate(self._requests(self.eval_rows, self.g.group_size, tag=-1))
        scores = [s for group in self._score(self.eval_rows, results) for s in group]
        return {
            "heldout_reward": statistics.fmean(s["reward"] for s in scores) if scores else 0.0,
            "heldout_accuracy": statistics.fmean(s["accuracy"] for s in scores) if scores else 0.0,
        }

    # ------------------------------------------------------------------ the step

    def collect(self, step: int) -> Rollouts:
        """Generation, rewards and group advantages for one step's prompts; zero-variance groups are dropped
        and re-sampled (up to `resample_rounds` extra batches) to refill the step."""
        g = self.g
        out = Rollouts(sampler_before=self.sampler.state())
        for round_ in range(1 + (g.resample_rounds if g.drop_zero_variance_groups else 0)):
            need = g.prompts_per_step - len(out.trajectories) // g.group_size
            if need <= 0:
                break
            rows = self.rows.take(self.sampler.take(need))  # this step's rows only, images included
            t = time.perf_counter()
            requests = self._requests(rows, g.group_size, tag=step * 7 + round_)
            results = self.generate(requests)
            out.generation_s += time.perf_counter() - t
            keep_rows = [
                (row, req, res)
                for row, req, res in zip(rows, requests, results)
                if res.ok and len(res.completions) == g.group_size
            ]
            out.rejected += len(rows) - len(keep_rows)
            if not keep_rows:
                continue
            t = time.perf_counter()
            scores = self._score([r for r, _, _ in keep_rows], [res for _, _, res in keep_rows])
            out.reward_s += time.perf_counter() - t
            rewards = torch.tensor([s["reward"] for group in scores for s in group])
            out.rewards += rewards.tolist()
            out.scores += [s for group in scores for s in group]
            adv = group_advantages(rewards, g.group_size, g.scale_by_std)
            keep = (
                nonzero_variance_groups(rewards, g.group_size)
                if g.drop_zero_variance_groups
                else torch.ones(len(keep_rows), dtype=torch.bool)
            )
            out.groups_dropped += int((~keep).sum())
            for gi, ((_, req, res), kept) in enumerate(zip(keep_rows, keep.tolist())):
                if not kept:
                    continue
                for ci, comp in enumerate(res.completions):
                    out.trajectories.append(
                        Trajectory(
                            req,
                            comp.token_ids,
                            comp.logprobs or [],
                            float(adv[gi * g.group_size + ci]),
                            float(rewards[gi * g.group_size + ci]),
                        )
                    )
        fresh = len(out.trajectories)
        out.trajectories = fill_step(self.buffer, out.trajectories, g.prompts_per_step * g.group_size)
        out.replayed = len(out.trajectories) - fresh
        return out

    def learn(self, trajectories: list[Trajectory]) -> dict:
        """One update on every learner (their shares in parallel); the learners' mean statistics.

        Whole groups go to one learner (its prompt is then encoded once there), balanced by completion tokens.
        """
        groups: dict[str, list[Trajectory]] = {}
        for t in trajectories:
            groups.setdefault(t.request.request_id, []).append(t)
        shares: list[list[Trajectory]] = [[] for _ in self.learners]
        load = [0] * len(self.learners)
        for group in sorted(groups.values(), key=lambda g: -sum(len(t.completion_ids) for t in g)):
            i = load.index(min(load))
            shares[i] += group
            load[i] += sum(len(t.completion_ids) for t in group)
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

    def train_step(self) -> dict:
        """Rollouts (this step's, or the ones prefetched during the last update), update, weight sync.

        With `off_policy_steps: 1` the next step's rollouts are generated with the current weights while
        the learners update: generation and training overlap, and every batch is one update old.
        """
        t0 = time.perf_counter()
        batch = self._prefetched.result() if self._prefetched is not None else self.collect(self.step)
        rollout_wait_s = time.perf_counter() - t0  # on-policy: the whole collect; overlapped: what was left of it
        self._prefetched = None
        if self.g.off_policy_steps and self.step + 1 < self.g.steps:
            self._prefetched = self._background.submit(self.collect, self.step + 1)
        t = time.perf_counter()
        learner_stats = self.learn(batch.trajectories) if batch.trajectories else {}
        update_s = time.perf_counter() - t
        t = time.perf_counter()
        if self._prefetched is not None:  # the sync must not land in the middle of the next step's rollouts
            futures.wait([self._prefetched])
        wait_s = time.perf_counter() - t
        sync = self._sync() if batch.trajectories else {"sync_s": 0.0}
        self.step += 1
        fresh = batch.trajectories[: len(batch.trajectories) - batch.replayed]  # replays: an earlier step's
        lengths = [len(tr.completion_ids) for tr in fresh]
        scores = batch.scores
        return {
            "reward_mean": statistics.fmean(batch.rewards) if batch.rewards else 0.0,
            "reward_std": statistics.pstdev(batch.rewards) if len(batch.rewards) > 1 else 0.0,
            "accuracy": statistics.fmean(s["accuracy"] for s in scores) if scores else 0.0,
            "format_rate": statistics.fmean(s["format"] for s in scores) if scores else 0.0,
            "accuracy_timeouts": sum(s.get("accuracy_timeout", 0) for s in scores),  # answer checks past deadline
            "response_length": statistics.fmean(lengths) if lengths else 0.0,
            "groups_dropped": batch.groups_dropped,
            "ssb_replayed": batch.replayed,
            "ssb_size": len(self.buffer),
            "prompts_rejected": batch.rejected,
            "trajectories": len(batch.trajectories),
            "generation_s": batch.generation_s,
            "reward_s": batch.reward_s,
            "update_s": update_s,
            "rollout_wait_s": rollout_wait_s,  # the step's wall time spent waiting for its batch
            "prefetch_wait_s": wait_s,  # overlapped: after the update, waiting for the next batch before the sync
            "sync_s": sync["sync_s"],
            "step_s": time.perf_counter() - t0,
            "rollout_restarts": self.restarts,
            **learner_stats,
        }

    def checkpoint(self) -> str:
        path = checkpoint_step(self.ckpt_dir, self.step)
        ray.get([learner.save.remote(path, self.step) for learner in self.learners])
        # Prompts of a batch prefetched but not trained on yet are not consumed: a resumed run redraws them.
        sampler = self._prefetched.result().sampler_before if self._prefetched is not None else self.sampler.state()
        # Written whole, after every learner's files: only a finished checkpoint becomes "latest".
        store.write_json(store.join(self.ckpt_dir, LATEST), {"step": self.step, "sampler": sampler})
        self.model_path = store.join(path, "model")
        return path

    def run(self) -> dict:
        # A resumed run keeps the held-out points logged up to its checkpoint (its metrics end there).
        held_keys = ("heldout_reward", "heldout_accuracy")
        history = [
            {"step": r["step"], **{k: r[k] for k in held_keys if k in r}}
            for r in read_jsonl(self.metrics.path)
            if "heldout_reward" in r
        ]
        if self.step == 0:
            history.append({"step": 0, **self.held_out_reward()})
            self.metrics.log(0, **{k: v for k, v in history[-1].items() if k != "step"})
        while self.step < self.g.steps:
            values = self.train_step()
            last = self.step == self.g.steps
            if self.step % self.g.eval_every_steps == 0 or last:
                held = self.held_out_reward()
                values.update(held)
                history.append({"step": self.step, **held})
            self.metrics.log(self.step, **values)
            if self.step % self.g.checkpoint_every_steps == 0 or last:
                self.checkpoint()
        final = store.join(self.out, "model")
        store.copy_tree(self.model_path, final)
        return {"model": final, "heldout": history}
