"""The GRPO step loop: rollouts -> rewards -> group advantages -> learner update -> weight sync, checkpoints.

`GRPORun` drives two roles: the Ray topology (`r1v_ray.grpo.topology`: placement groups, learner, rollout and
reward actors, restarts) and the rollout collector (`r1v_ray.grpo.rollouts`: prompts, generation, scores,
the Selective Sample Buffer). Every step's time is split into generation / reward / update / sync. With
`grpo.off_policy_steps: 1` the next step's rollouts are generated in a background thread while the learners
update; that thread only generates and scores, and a rollout worker it loses is restarted here, in the step
loop, which owns the topology. Checkpoints every k steps hold the learners' DeepSpeed state, an HF checkpoint
and the sampler position, and a restarted job resumes from the newest one.
"""

from __future__ import annotations

import statistics
import time
from concurrent import futures

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import RowReader
from r1v_ray.grpo.rollouts import RolloutCollector, Rollouts
from r1v_ray.grpo.sampler import PromptSampler
from r1v_ray.grpo.topology import GRPOTopology, RolloutWorkerLost
from r1v_ray.metrics import StageMetrics, read_jsonl, truncate_after
from r1v_ray.run_dir import LATEST, METRICS, checkpoint_step


def step_values(batch: Rollouts, timings: dict, ssb_size: int, solved: int, restarts: int, learner_stats: dict) -> dict:
    """The metrics one step logs: its batch's rewards, scores and lengths, the phases' seconds, the learners'."""
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
        "ssb_size": ssb_size,
        "prompts_solved": solved,  # rows not drawn again (grpo.skip_solved_prompts)
        "prompts_rejected": batch.rejected,
        "trajectories": len(batch.trajectories),
        "generation_s": batch.generation_s,
        "reward_s": batch.reward_s,
        **timings,
        "rollout_restarts": restarts,
        **learner_stats,
    }


class GRPORun:
    def __init__(self, cfg: R1VConfig, init_checkpoint: str, data_uri: str, eval_uri: str, out_dir: str):
        """Prompts are rows of `data_uri`, read by position a step at a time (never the whole set); the
        held-out reward uses the first `grpo.eval_prompts` rows of `eval_uri`. The calling thread owns
        the topology: `train_step`, `checkpoint`, `run` and `shutdown` are called from it."""
        self.cfg, self.g, self.out = cfg, cfg.grpo, out_dir
        rows = RowReader(data_uri)
        if len(rows) < self.g.prompts_per_step:
            raise ValueError(
                f"GRPO needs at least grpo.prompts_per_step={self.g.prompts_per_step} distinct prompts; "
                f"{data_uri} has {len(rows)} (lower grpo.tau or grpo.prompts_per_step)"
            )
        eval_reader = RowReader(eval_uri)
        self.eval_rows = eval_reader.take(range(min(self.g.eval_prompts, len(eval_reader))))
        self.ckpt_dir = store.join(out_dir, "checkpoints")
        latest = store.read_json(store.join(self.ckpt_dir, LATEST), None)
        self.step = latest["step"] if latest else 0
        sampler = PromptSampler(len(rows), self.g.seed, **(latest["sampler"] if latest else {}))
        model_path = checkpoint_step(self.ckpt_dir, self.step, "model") if latest else init_checkpoint
        if latest:
            print(f"[grpo] resuming at step {self.step} from {checkpoint_step(self.ckpt_dir, self.step)}")
        self.metrics = StageMetrics("grpo", store.join(out_dir, METRICS))
        if latest:
            truncate_after(self.metrics.path, self.step)
        else:
            store.remove(self.metrics.path)
        self._background = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-rollouts")
        self._prefetched: futures.Future | None = None  # next step's rollouts (off_policy_steps: 1)
        self._prefetch_from: dict = {}  # the sampler position that prefetch started drawing at
        resume_from = checkpoint_step(self.ckpt_dir, self.step) if latest else None
        self.topology = GRPOTopology(cfg, model_path, init_checkpoint, resume_from)
        self.rollouts = RolloutCollector(self.g, rows, sampler, self.topology.score)

    @property
    def model_path(self) -> str:
        """The newest model: the last checkpoint's, or the initial one before the first."""
        return self.topology.model_path

    def shutdown(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=True)
        self.topology.shutdown()

    # ------------------------------------------------------------------ the step

    def generate(self, requests: list) -> list:
        """Generation from the step loop: a lost rollout worker is restarted and the same requests sent again."""
        while True:
            try:
                return self.topology.generate(requests)
            except RolloutWorkerLost as lost:
                self.topology.restart_rollout(lost)

    def held_out_reward(self) -> dict:
        return self.rollouts.held_out_reward(self.eval_rows, self.generate)

    def train_step(self) -> dict:
        """Rollouts (this step's, or the ones prefetched during the last update), update, weight sync.

        With `off_policy_steps: 1` the next step's rollouts are generated with the current weights while
        the learners update: generation and training overlap, and every batch is one update old.
        """
        t0 = time.perf_counter()
        if self._prefetched is not None:
            batch = self._prefetched.result()
        else:
            batch = self.rollouts.collect(self.step, self.generate)
        rollout_wait_s = time.perf_counter() - t0  # on-policy: the whole collect; overlapped: what was left of it
        self._prefetched = None
        # Marked once the batch is trained on, before the next draw: a batch prefetched but dropped marks nothing.
        self.rollouts.sampler.mark_solved(batch.solved)
        if self.g.off_policy_steps and self.step + 1 < self.g.steps:
            # The background thread generates through the topology without restarting: a lost worker ends it.
            self._prefetch_from = self.rollouts.sampler.state()
            self._prefetched = self._background.submit(self.rollouts.collect, self.step + 1, self.topology.generate)
        t = time.perf_counter()
        learner_stats = self.topology.learn(batch.trajectories) if batch.trajectories else {}
        update_s = time.perf_counter() - t
        t = time.perf_counter()
        restarted = self._settle_prefetch()
        wait_s = time.perf_counter() - t
        if restarted is not None:  # the restart brought the new workers to the learners' weights
            sync = restarted
        else:
            sync = self.topology.sync_weights() if batch.trajectories else {"sync_s": 0.0}
        self.step += 1
        timings = {
            "update_s": update_s,
            "rollout_wait_s": rollout_wait_s,  # the step's wall time spent waiting for its batch
            "prefetch_wait_s": wait_s,  # overlapped: after the update, waiting for the next batch before the sync
            "sync_s": sync["sync_s"],
            "step_s": time.perf_counter() - t0,
        }
        solved = len(self.rollouts.sampler.solved)
        return step_values(batch, timings, len(self.rollouts.buffer), solved, self.topology.restarts, learner_stats)

    def _settle_prefetch(self) -> dict | None:
        """Wait for the next step's rollouts: the sync must not land in the middle of them. Rollouts that lost
        a worker are dropped: the sampler goes back to where they began drawing, the workers are restarted
        here (the owner thread; the restart's sync figures are returned) and the next step collects on-policy."""
        if self._prefetched is None:
            return None
        futures.wait([self._prefetched])
        lost = self._prefetched.exception()
        if not isinstance(lost, RolloutWorkerLost):
            return None
        self._prefetched = None
        self.rollouts.rewind(self._prefetch_from)
        return self.topology.restart_rollout(lost)

    def checkpoint(self) -> str:
        path = checkpoint_step(self.ckpt_dir, self.step)
        self.topology.save(path, self.step)
        # Prompts of a batch prefetched but not trained on yet are not consumed: a resumed run redraws them.
        if self._prefetched is not None:
            sampler = self._prefetched.result().sampler_before
        else:
            sampler = self.rollouts.sampler.state()
        # Written whole, after every learner's files: only a finished checkpoint becomes "latest".
        store.write_json(store.join(self.ckpt_dir, LATEST), {"step": self.step, "sampler": sampler})
        return path

    def run(self) -> dict:
        # A resumed run keeps the held-out points logged up to its checkpoint (its metrics end there).
        held_keys = ("heldout_reward", "heldout_accuracy", "heldout_response_length")
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
