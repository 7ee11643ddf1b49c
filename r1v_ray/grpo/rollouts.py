"""GRPO's rollouts: each step's prompts drawn, generated, scored and turned into group-advantage trajectories.

`RolloutCollector` holds what a step's batch is made from (the prompt rows, the sampler position, the
Selective Sample Buffer); the generation itself goes through the `generate` function it is handed, so the
same collect runs in the step loop (which restarts lost rollout workers and retries) and in the prefetch
thread (where a lost worker ends the collect: see `r1v_ray.grpo.topology`). One collect runs at a time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from r1v_ray.config import GRPOConfig
from r1v_ray.data.io import RowReader
from r1v_ray.grpo.advantages import group_advantages
from r1v_ray.grpo.algorithms import nonzero_variance_groups
from r1v_ray.grpo.batch import Trajectory
from r1v_ray.grpo.sample_buffer import SelectiveSampleBuffer, fill_step
from r1v_ray.grpo.sampler import PromptSampler
from r1v_ray.prompts import paper_request, row_choices

Generate = Callable[[list], list]  # requests -> results in request order
Score = Callable[[list[tuple]], list[dict]]  # (completion, answer, choices) items -> score dicts


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
    solved: list[int] = dataclasses.field(default_factory=list)  # rows every sample of which was right
    generation_s: float = 0.0
    reward_s: float = 0.0


def step_requests(g: GRPOConfig, rows: list[dict], n: int, tag: int) -> list:
    """GRPO's paper request per row, n samples (with log-probs where the learner uses them), seeded by
    (grpo.seed, tag, position); ids unique per call (row ids need not be unique)."""
    out = []
    for k, row in enumerate(rows):
        req = paper_request(
            row, n, g.max_completion_tokens, g.temperature, g.top_p, seed=g.seed * 1_000_003 + tag * 10_007 + k
        )
        req.sampling.logprobs = g.old_logprobs == "rollout"
        req.request_id = f"{req.request_id}@{tag}.{k}"
        out.append(req)
    return out


class RolloutCollector:
    def __init__(self, g: GRPOConfig, rows: RowReader, sampler: PromptSampler, score: Score):
        self.g, self.rows, self.sampler, self._score_items = g, rows, sampler, score
        self.buffer = SelectiveSampleBuffer(g.ssb_capacity, g.ssb_min_abs_advantage)

    def rewind(self, position: dict) -> None:
        """Back to a sampler position (a collect that failed drew prompts it never trained on)."""
        self.sampler = PromptSampler(self.sampler.n, self.sampler.seed, **position)

    def score(self, rows: list[dict], results: list) -> list[list[dict]]:
        """Every completion of every row scored; one list of scores per row."""
        items, shape = [], []
        for row, res in zip(rows, results):
            choices = row_choices(row)
            items += [(c.text, row["answer"], choices) for c in res.completions]
            shape.append(len(res.completions))
        flat = self._score_items(items)
        out, k = [], 0
        for n in shape:
            out.append(flat[k : k + n])
            k += n
        return out

    def held_out_reward(self, rows: list[dict], generate: Generate) -> dict:
        """Mean reward, accuracy and response length of `group_size` samples of each held-out row. The
        prompts and seeds are the same at every call, so the series shows what the model changed; a step's
        batch length also moves with which tasks its few prompts drew."""
        results = generate(step_requests(self.g, rows, self.g.group_size, tag=-1))
        scores = [s for group in self.score(rows, results) for s in group]
        lengths = [len(c.token_ids) for res in results for c in res.completions]
        return {
            "heldout_reward": statistics.fmean(s["reward"] for s in scores) if scores else 0.0,
            "heldout_accuracy": statistics.fmean(s["accuracy"] for s in scores) if scores else 0.0,
            "heldout_response_length": statistics.fmean(lengths) if lengths else 0.0,
        }

    def collect(self, step: int, generate: Generate) -> Rollouts:
        """Generation, rewards and group advantages for one step's prompts; zero-variance groups are dropped
        and re-sampled (up to `resample_rounds` extra batches) to refill the step."""
        g = self.g
        out = Rollouts(sampler_before=self.sampler.state())
        for round_ in range(1 + (g.resample_rounds if g.drop_zero_variance_groups else 0)):
            need = g.prompts_per_step - len(out.trajectories) // g.group_size
            if need <= 0:
                break
            drawn = self.sampler.take(need)
            rows = self.rows.take(drawn)  # this step's rows only, images included
            t = time.perf_counter()
            requests = step_requests(g, rows, g.group_size, tag=step * 7 + round_)
            results = generate(requests)
            out.generation_s += time.perf_counter() - t
            kept = [item for item in zip(drawn, rows, requests, results) if self._complete(item[3])]
            out.rejected += len(rows) - len(kept)
            if kept:
                self._add_groups(out, kept)
        fresh = len(out.trajectories)
        out.trajectories = fill_step(self.buffer, out.trajectories, g.prompts_per_step * g.group_size)
        out.replayed = len(out.trajectories) - fresh
        return out

    def _complete(self, result) -> bool:
        return result.ok and len(result.completions) == self.g.group_size

    def _add_groups(self, out: Rollouts, kept: list[tuple]) -> None:
        """Score one round's complete groups; the trajectories of those with reward variance (all, when
        `drop_zero_variance_groups` is off) join the batch with their group advantages."""
        g = self.g
        t = time.perf_counter()
        scores = self.score([r for _, r, _, _ in kept], [res for _, _, _, res in kept])
        out.reward_s += time.perf_counter() - t
        rewards = torch.tensor([s["reward"] for group in scores for s in group])
        out.rewards += rewards.tolist()
        out.scores += [s for group in scores for s in group]
        adv = group_advantages(rewards, g.group_size, g.scale_by_std)
        keep = (
            nonzero_variance_groups(rewards, g.group_size)
            if g.drop_zero_variance_groups
            else torch.ones(len(kept), dtype=torch.bool)
        )
        out.groups_dropped += int((~keep).sum())
        if g.skip_solved_prompts:  # marked in the sampler when the batch is trained on (`GRPORun.train_step`)
            out.solved += [i for (i, _, _, _), group in zip(kept, scores) if all(s["accuracy"] == 1 for s in group)]
        for gi, ((_, _, req, res), use) in enumerate(zip(kept, keep.tolist())):
            if not use:
                continue
            for ci, comp in enumerate(res.completions):
                i = gi * g.group_size + ci
                out.trajectories.append(
                    Trajectory(req, comp.token_ids, comp.logprobs or [], float(adv[i]), float(rewards[i]))
                )
