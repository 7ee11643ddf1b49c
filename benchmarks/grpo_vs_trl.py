"""GRPO throughput: r1v_ray's actor topology against TRL's GRPOTrainer, completions per second.

Same tiny R1V checkpoint (HF InternVL layout, image prompts), same synthetic prompts
and prompt text, same group size, prompts per step, max completion length,
temperature, learning rate, rule rewards (accuracy + 0.5 format), trainable parts
(projector + LLM, vision frozen), fp32 on CPU, no KL term, no zero-variance
dropping. What differs is what is measured: r1v_ray generates with vLLM in a
rollout actor and updates with 2 DeepSpeed (gloo) learner actors; TRL generates
with HF `generate` and updates in one process (its default `use_vllm=False`).
r1v_ray runs twice: on-policy (`grpo.off_policy_steps: 0`, the paper's setting and
TRL's) and with the next step's rollouts generated during the update
(`off_policy_steps: 1`). The first step of each is a warm-up and is not timed, nor
is r1v_ray's last (in overlapped mode it generates nothing), so every timed step generates and
trains one batch.
Needs the `bench` extra (trl).

    .venv/bin/python benchmarks/grpo_vs_trl.py [--steps 6] [--prompts 8] [--group 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.config import load_config  # noqa: E402
from r1v_ray.data.io import write_parquet  # noqa: E402
from r1v_ray.data.schema import canonical_table  # noqa: E402
from r1v_ray.data.synthetic import iter_rows  # noqa: E402
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402
from r1v_ray.prompts import build_question_text  # noqa: E402
from r1v_ray.rewards import accuracy_reward, format_reward  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def r1v_samples_per_s(ckpt: str, rows: list[dict], args, work: str, off_policy_steps: int) -> float:
    import ray

    from r1v_ray.grpo.trainer import GRPORun

    sets = {
        "grpo.steps": args.steps,
        "grpo.prompts_per_step": args.prompts,
        "grpo.group_size": args.group,
        "grpo.max_completion_tokens": args.max_tokens,
        "grpo.learning_rate": args.lr,
        "grpo.eval_every_steps": 10_000,
        "grpo.eval_prompts": 1,
        "grpo.drop_zero_variance_groups": "false",
        "grpo.checkpoint_every_steps": 10_000,
        "grpo.off_policy_steps": off_policy_steps,
        "rollout.max_model_len": 1024,
    }
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [f"{k}={v}" for k, v in sets.items()])
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    data = os.path.join(work, "prompts")
    if not os.path.exists(data):
        write_parquet(canonical_table(rows), data)  # GRPO reads its prompts by position from a dataset
    run = GRPORun(cfg, ckpt, data, data, os.path.join(work, f"r1v-{off_policy_steps}"))
    try:
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            values = run.train_step()
            times.append(time.perf_counter() - start)
            assert values["trajectories"] == args.prompts * args.group
            print(
                f"r1v_ray (off_policy_steps={off_policy_steps}) step: "
                + ", ".join(
                    f"{k} {values[k]:.2f}" for k in ("generation_s", "reward_s", "update_s", "sync_s", "step_s")
                )
            )
    finally:
        run.shutdown()
        ray.shutdown()
    # The first step warms up; the last one, when rollouts overlap, has no next batch to generate.
    return args.prompts * args.group * (args.steps - 2) / sum(times[1:-1])


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args(argv)
    rows = list(iter_rows(args.prompts * args.steps, seed=0, split="bench"))
    with tempfile.TemporaryDirectory() as work:
        ckpt = write_tiny_checkpoint(work)
        trl = trl_samples_per_s(ckpt, rows, args, work)  # first: no Ray process left over from a run before it
        on_policy = r1v_samples_per_s(ckpt, rows, args, work, 0)
        overlapped = r1v_samples_per_s(ckpt, rows, args, work, 1)
    print(
        f"{args.steps - 2} (r1v_ray) / {args.steps - 1} (TRL) timed steps x {args.prompts} prompts x {args.group} completions, <= {args.max_tokens} tokens"
    )
    print(f"TRL GRPO                          : {trl:8.2f} completions/s")
    print(
        f"r1v_ray GRPO, on-policy           : {on_policy:8.2f} completions/s  {on_policy / trl:5.2f}x (target >= 1.5x)"
    )
    print(
        f"r1v_ray GRPO, rollouts overlapped : {overlapped:8.2f} completions/s  {overlapped / trl:5.2f}x (target >= 1.5x)"
    )


if __name__ == "__main__":
    main()
