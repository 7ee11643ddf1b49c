"""One GRPO learner update in-process (no Ray): seconds per phase over synthetic trajectories, optionally profiled.

The same `LearnerWorker.train_step` the learner actors run (DeepSpeed on gloo, world 1, the tiny R1V model,
the packed shared-prompt row), on `--prompts` x `--group` completions of `--min-tokens`..`--max-tokens` random
tokens. Compare two commits by running it in a worktree of each, on a quiet host (BENCHMARKS.md has the
history); `--profile` prints torch.profiler's table of the last update.

    .venv/bin/python benchmarks/learner_step.py [--steps 6] [--min-tokens 10] [--max-tokens 60] [--profile]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from r1v_ray.config import GRPOConfig  # noqa: E402
from r1v_ray.data.synthetic import corpus, iter_rows  # noqa: E402
from r1v_ray.grpo.batch import Trajectory  # noqa: E402
from r1v_ray.grpo.learner import LearnerWorker  # noqa: E402
from r1v_ray.grpo.rollouts import step_requests  # noqa: E402
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402


def trajectories(g: GRPOConfig, rows: list[dict], tag: int, lengths: tuple[int, int], rng: random.Random) -> list:
    out = []
    for req in step_requests(g, rows, g.group_size, tag=tag):
        for _ in range(g.group_size):
            n = rng.randint(*lengths)
            ids = [rng.randrange(5, 600) for _ in range(n)]
            out.append(Trajectory(req, ids, [-3 * rng.random() for _ in range(n)], rng.gauss(0, 1), 1.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="updates; the first warms up and is not counted")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--min-tokens", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a learner actor with one CPU has one)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = GRPOConfig(
        learning_rate=1e-4, group_size=args.group, prompts_per_step=args.prompts, max_completion_tokens=128,
        zero_stage=2, num_learners=1, use_gpu=False, loss_agg="token_mean",
    )  # fmt: skip
    worker = LearnerWorker(write_tiny_checkpoint(tempfile.mkdtemp(), corpus), g, ["projector", "llm", "lm_head"], 0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker.init("127.0.0.1", port)
    rows = list(iter_rows(args.prompts * (args.steps + 1), seed=0, split="bench"))
    rng, lengths, times = random.Random(0), (args.min_tokens, args.max_tokens), []
    for k in range(args.steps):
        batch = trajectories(g, rows[k * args.prompts : (k + 1) * args.prompts], k, lengths, rng)
        start = time.perf_counter()
        phases = worker.train_step(batch)
        times.append(time.perf_counter() - start)
        print(f"update {k}: {times[-1]:.3f} s", {p: round(v, 3) for p, v in phases.items() if p.endswith("_s")})
    print(f"median over updates 2..{args.steps}: {statistics.median(times[1:]):.3f} s "
          f"(range {min(times[1:]):.3f}-{max(times[1:]):.3f})")  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        batch = trajectories(g, rows[-args.prompts :], args.steps, lengths, rng)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            worker.train_step(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
