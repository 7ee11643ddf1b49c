"""GRPO throughput: r1v_ray's actor topology against TRL's GRPOTrainer, completions per second.

Same tiny R1V checkpoint (HF InternVL layout, image prompts), same synthetic prompts
and prompt text, same group size, prompts per step, max completion length,
temperature, learning rate, rule rewards (accuracy + 0.5 format), trainable parts
(projector + LLM, vision frozen), fp32 on CPU, no KL term, no zero-variance
dropping. What differs is what is measured: r1v_ray generates with vLLM in a
rollout actor and updates with DeepSpeed (gloo) learner actors; TRL generates
with HF `generate` and updates in one process (its default `use_vllm=False`).
r1v_ray runs twice: on-policy (`grpo.off_policy_steps: 0`, the paper's setting and
TRL's) with 2 learners and 2 rollout workers (they take turns with the learners, so each
phase has both cores, as TRL's has), the ratio against the learner's own log-probs as TRL
takes it (`grpo.old_logprobs: learner`: the engine returns no per-token log-probs); and
with the next step's rollouts generated during the update (`off_policy_steps: 1`) with 1
learner and 1 rollout worker, so that each has a core of the 2 (on a cluster they have
their own GPUs), the ratio against the rollout's log-probs (the rollouts are a step stale).
`--learners` / `--overlapped-learners`, `--rollout-workers` / `--overlapped-rollout-workers`,
`--old-logprobs`. The first step of each is a warm-up and is not timed, nor
is r1v_ray's last (in overlapped mode it generates nothing), so every timed step generates and
trains one batch.
Needs the `bench` extra (trl).

    .venv/bin/python benchmarks/grpo_vs_trl.py [--runs 3] [--steps 6] [--prompts 8] [--group 8] [--max-tokens 128]
        [--learners 2] [--overlapped-learners 1] [--rollout-workers 2] [--overlapped-rollout-workers 1]
        [--old-logprobs learner|rollout]

Each run prints a per-phase profile of the step and the rollout's tokens/s three ways (inside the steps, the same
requests sent straight to the rollout worker, and benchmarks/rollout.py's 32 x 8 workload on that worker).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.config import load_config  # noqa: E402
from r1v_ray.data.io import write_parquet  # noqa: E402
from r1v_ray.data.schema import canonical_table  # noqa: E402
from r1v_ray.data.synthetic import (
    corpus,  # noqa: E402
    iter_rows,  # noqa: E402
)
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402
from r1v_ray.prompts import build_question_text  # noqa: E402
from r1v_ray.rewards import accuracy_reward, format_reward  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PHASES = (  # printed per mode: medians over the timed steps, seconds per step
    ("step_s", "whole step"),
    ("generation_s", "generation (in the background when overlapped)"),
    ("scoring_s", "scoring (rewards)"),
    ("rollout_wait_s", "waiting for rollouts (the step's critical path)"),
    ("ref_logprobs_s", "reference log-probs (learner, KL only)"),
    ("update_s", "learner update, of which:"),
    ("encode_s", "  prompt encoding"),
    ("forward_s", "  forward (log-probs)"),
    ("backward_s", "  backward + gradient all-reduce"),
    ("optimizer_s", "  optimizer step"),
    ("sync_s", "weight sync"),
    ("other_s", "other (driver, Ray calls)"),
)


def _phases(values: dict) -> dict:
    waiting = values["rollout_wait_s"] + values["prefetch_wait_s"]
    out = {k: values.get(k, 0.0) for k, _ in PHASES if k in values}
    out.update(scoring_s=values["reward_s"], rollout_wait_s=waiting)
    out["other_s"] = values["step_s"] - waiting - values["update_s"] - values["sync_s"]
    return out


def _engine_tokens_per_s(run, requests: list) -> float:
    """The rollout worker's own speed on `requests`, one call (no trainer in between)."""
    import ray

    start = time.perf_counter()
    results = ray.get(run.topology.rollout_workers[0].generate.remote(requests))
    seconds = time.perf_counter() - start
    return sum(len(c.token_ids) for r in results for c in r.completions) / seconds


def r1v_samples_per_s(ckpt: str, rows: list[dict], args, work: str, off_policy_steps: int) -> tuple[float, dict]:
    """Completions/s over the timed steps, and the per-phase profile (plus rollout tokens/s: in the steps,
    the same step's requests sent straight to the rollout worker, and rollout.py's workload on that worker)."""
    import ray

    from benchmarks.rollout import requests as rollout_py_requests
    from r1v_ray.grpo.rollouts import step_requests
    from r1v_ray.grpo.trainer import GRPORun

    sets = {
        "grpo.steps": args.steps,
        "grpo.prompts_per_step": args.prompts,
        "grpo.group_size": args.group,
        "grpo.max_completion_tokens": args.max_tokens,
        "grpo.learning_rate": args.lr,
        "grpo.loss_agg": "token_mean",  # TRL's loss_type="dapo"
        "grpo.eval_every_steps": 10_000,
        "grpo.eval_prompts": 1,
        "grpo.drop_zero_variance_groups": "false",
        "grpo.checkpoint_every_steps": 10_000,
        "grpo.off_policy_steps": off_policy_steps,
        "grpo.num_learners": args.learners if off_policy_steps == 0 else args.overlapped_learners,
        "rollout.num_workers": args.rollout_workers if off_policy_steps == 0 else args.overlapped_rollout_workers,
        # Overlapped rollouts are one step stale: their ratio needs the sampling policy's log-probs.
        "grpo.old_logprobs": args.old_logprobs if off_policy_steps == 0 else "rollout",
        "rollout.max_model_len": 1024,
    }
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [f"{k}={v}" for k, v in sets.items()])
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    data = os.path.join(work, "prompts")
    if not os.path.exists(data):
        write_parquet(canonical_table(rows), data)  # GRPO reads its prompts by position from a dataset
    run = GRPORun(cfg, ckpt, data, data, os.path.join(work, f"r1v-{off_policy_steps}"))
    try:
        times, phases, step_tps = [], [], []
        for i in range(args.steps):
            start = time.perf_counter()
            values = run.train_step()
            times.append(time.perf_counter() - start)
            assert values["trajectories"] == args.prompts * args.group
            if 0 < i < args.steps - 1:
                phases.append(_phases(values))
                step_tps.append(values["response_length"] * values["trajectories"] / values["generation_s"])
        engine = {"rollout tok/s in the steps": statistics.median(step_tps)}
        if off_policy_steps == 0:  # measured once per run, with nothing else running
            same = step_requests(run.g, run.rollouts.rows.take(list(range(args.prompts))), args.group, tag=99)
            engine["same requests, straight to the worker"] = _engine_tokens_per_s(run, same)
            engine["rollout.py workload on the worker"] = _engine_tokens_per_s(run, rollout_py_requests(32, 8, 64))
    finally:
        run.shutdown()
        ray.shutdown()
    profile = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    # The first step warms up; the last one, when rollouts overlap, has no next batch to generate.
    return args.prompts * args.group * (args.steps - 2) / sum(times[1:-1]), {"phases": profile, "rollout": engine}


def trl_samples_per_s(ckpt: str, rows: list[dict], args, work: str) -> float:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, answer, choices, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [accuracy_reward(t, a, ch) + 0.5 * format_reward(t) for t, a, ch in zip(texts, answer, choices)]

    data = Dataset.from_list(
        [
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": build_question_text(r["question"], r["choices"])},
                        ],
                    }
                ],
                "image": Image.open(io.BytesIO(r["image"])).convert("RGB"),
                "answer": r["answer"],
                "choices": r["choices"],
            }
            for r in rows
        ]
    )
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=os.path.join(work, "trl"),
        max_steps=args.steps,
        learning_rate=args.lr,
        num_generations=args.group,
        per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        loss_type="dapo",
        use_vllm=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        lr_scheduler_type="constant",
        warmup_steps=0,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=data,
        processing_class=AutoProcessor.from_pretrained(ckpt),
        callbacks=[Clock()],
    )
    trainer.train()
    return args.prompts * args.group * (len(stamps) - 1) / (stamps[-1] - stamps[0])  # steps 2..n


def one_run(args) -> dict:
    rows = list(iter_rows(args.prompts * args.steps, seed=0, split="bench"))
    out = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as work:
        ckpt = write_tiny_checkpoint(work, corpus)
        out["trl"] = trl_samples_per_s(ckpt, rows, args, work)  # first: no Ray process left over from a run before
        out["on_policy"], out["on_policy_profile"] = r1v_samples_per_s(ckpt, rows, args, work, 0)
        out["overlapped"], out["overlapped_profile"] = r1v_samples_per_s(ckpt, rows, args, work, 1)
    out["load_after"] = os.getloadavg()[0]
    return out


def print_run(r: dict) -> None:
    print(
        f"load average (1 min) before / after: {r['load_before']:.1f} / {r['load_after']:.1f} on {os.cpu_count()} cores"
    )
    print(f"TRL GRPO                          : {r['trl']:8.2f} completions/s")
    for key, name, target in (("on_policy", "on-policy          ", 1.5), ("overlapped", "rollouts overlapped", 2.0)):
        ratio = r[key] / r["trl"]
        print(f"r1v_ray GRPO, {name} : {r[key]:8.2f} completions/s  {ratio:5.2f}x (target >= {target}x)")
    print("per-phase profile, seconds per step (medians over the timed steps): on-policy | overlapped")
    for k, label in PHASES:
        on, over = r["on_policy_profile"]["phases"].get(k), r["overlapped_profile"]["phases"].get(k)
        if on is not None:
            print(f"  {label:52s} {on:6.3f} | {over:6.3f}")
    for mode in ("on_policy", "overlapped"):
        for k, v in r[f"{mode}_profile"]["rollout"].items():
            print(f"  rollout tokens/s, {mode}: {k:40s} {v:9.0f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--learners", type=int, default=2, help="DeepSpeed learner actors, on-policy")
    # Overlapped, generation and the update run at once: on 2 cores one learner leaves the rollout worker its
    # own core (as a cluster gives rollouts and learners their own GPUs); two would share the cores with it.
    ap.add_argument("--overlapped-learners", type=int, default=1, help="learner actors with rollouts overlapped")
    # On-policy, generation and the update take turns: two rollout workers use both cores while the learners
    # wait (as TRL's generate uses both); overlapped, one worker leaves the learner the other core.
    ap.add_argument("--rollout-workers", type=int, default=2, help="vLLM rollout actors, on-policy")
    ap.add_argument("--overlapped-rollout-workers", type=int, default=1, help="vLLM rollout actors, overlapped")
    # learner: TRL's on-policy ratio (against the learner's own log-probs before the update; the engine then
    # returns no per-token log-probs); rollout: against the engine's, as the demo trains.
    ap.add_argument("--old-logprobs", choices=("learner", "rollout"), default="learner", help="on-policy only")
    ap.add_argument("--runs", type=int, default=3, help="each in its own process; medians printed at the end")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one run, its result as JSON
    args = ap.parse_args(argv)
    if args.json:
        print("RESULT " + json.dumps(one_run(args)))
        return
    print(
        f"{args.steps - 2} (r1v_ray) / {args.steps - 1} (TRL) timed steps x {args.prompts} prompts x "
        f"{args.group} completions, <= {args.max_tokens} tokens; {args.runs} runs"
    )
    runs = []
    for i in range(args.runs):
        cmd = [sys.executable, os.path.abspath(__file__), "--json", *(argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        print(f"--- run {i + 1}")
        print_run(runs[-1])
    on = [r["on_policy"] / r["trl"] for r in runs]
    over = [r["overlapped"] / r["trl"] for r in runs]
    print(f"--- medians over {len(runs)} runs (range)")
    print(f"on-policy  / TRL: {statistics.median(on):5.2f}x ({min(on):.2f}-{max(on):.2f}), target >= 1.5x")
    print(f"overlapped / TRL: {statistics.median(over):5.2f}x ({min(over):.2f}-{max(over):.2f}), target >= 2.0x")


if __name__ == "__main__":
    main()
