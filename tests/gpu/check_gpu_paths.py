"""The GPU paths on one CUDA device, with the same classes the CPU tests run (not collected by pytest:
CI has no GPU; run it on a GPU box after `./setup.sh gpu`):

    python tests/gpu/check_gpu_paths.py [--out DIR]

1. SFT on Ray Train: a GPU worker, NCCL process group, DeepSpeed ZeRO-3, bf16. The loss is finite and
   falls, frozen tensors are bit-identical to the initial checkpoint's (in bf16), the projector moved,
   and the HF checkpoint exported under ZeRO-3 (gathered one parameter at a time) loads in transformers.
2. GRPO: a DeepSpeed ZeRO-3 bf16 learner (NCCL group) colocated with a rollout engine on the same GPU
   (half each); after an update and an object-store weight sync, the rollout engine's log-probs of
   fixed completions equal the learner's within a bf16 tolerance; two full steps run, a checkpoint is
   written, and a new run resumes from it and steps on.

3. A ZeRO-3 learner created sharded on CUDA (NCCL group, bf16, in its own process): every parameter is
   a partition on the GPU from the start (built under `deepspeed.zero.Init`, each rank reading only its
   slice of each weight), the GPU's peak allocation while loading stays under the model's bf16 bytes plus
   its largest tensor (never a second whole copy), and the export, gathered one parameter at a time and
   streamed into several safetensors shards with HF's index, equals the checkpoint in bf16 bit for bit.
4. Packed and shared-prompt attention as CUDA runs it (FlexAttention, compiled, bf16, GQA) against the
   per-sample SDPA loop, with the fused kernel's speedup (tests/gpu/check_flex_attention.py, which also
   runs alone). The GRPO and SFT checks above run it inside the model.

Exits non-zero on the first failed check; writes a JSON summary to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import ray  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from r1v_ray.data.synthetic import corpus  # noqa: E402
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_flex_attention import check_flex_attention  # noqa: E402

# bf16 keeps 8 mantissa bits: a log-prob of about -5 is exact to ~0.02, and the learner's packed
# attention sums in another order than the rollout engine's, so the two may differ by a few of those.
BF16_LOGPROB_TOL = 0.1


def check(name: str, ok: bool, detail) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        raise SystemExit(f"GPU check failed: {name}: {detail}")


def check_sft(work: str, init: str) -> dict:
    from r1v_ray.config import SFTConfig
    from r1v_ray.data.synthetic import write_split
    from r1v_ray.model.assemble import load_checkpoint
    from r1v_ray.sft.ray_train import run_sft
    from r1v_ray.sft.trainer import METRICS_FILE, SFTJob

    data = os.path.join(work, "sft_data")
    write_split(data, 64, seed=1)
    out = os.path.join(work, "sft")
    job = SFTJob(
        init_checkpoint=init,
        data_uri=data,
        output_dir=out,
        learning_rate=2e-3,
        stage="gpu-sft",
        sft=SFTConfig(
            global_batch_size=8,
            micro_batch_size=4,
            max_length=512,
            zero_stage=3,
            num_workers=1,
            use_gpu=True,
            checkpoint_every_steps=4,
            log_every_steps=1,
            warmup_ratio=0.1,
        ),
        dtype="bfloat16",
        trainable_prefixes=["projector"],
        epochs=2,
    )
    start = time.time()
    final = run_sft(job)
    seconds = time.time() - start
    with open(os.path.join(out, METRICS_FILE)) as f:
        losses = [json.loads(line)["loss"] for line in f]
    check("sft loss finite", all(torch.isfinite(torch.tensor(losses))), losses[:3] + ["..."] + losses[-3:])
    check(
        "sft loss falls",
        sum(losses[-4:]) < sum(losses[:4]),
        f"first 4 {sum(losses[:4]):.3f}, last 4 {sum(losses[-4:]):.3f}",
    )
    before, after = (
        load_file(os.path.join(init, "model.safetensors")),
        load_file(os.path.join(final, "model.safetensors")),
    )
    frozen = [k for k in before if "multi_modal_projector" not in k]
    changed = [k for k in frozen if not torch.equal(before[k].to(torch.bfloat16), after[k])]
    check("sft frozen tensors bit-identical (bf16)", not changed, f"{len(frozen)} frozen, changed: {changed[:3]}")
    moved = [
        k for k in before if "multi_modal_projector" in k and not torch.equal(before[k].to(torch.bfloat16), after[k])
    ]
    check("sft projector moved", bool(moved), f"{len(moved)} projector tensors changed")
    model, _ = load_checkpoint(final, dtype="bfloat16", device="cuda")
    check("sft ZeRO-3 export loads in transformers", model is not None, type(model).__name__)
    return {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1], "seconds": seconds}


def check_grpo(work: str, init: str) -> dict:
    from r1v_ray.config import load_config
    from r1v_ray.data.synthetic import iter_rows, write_split
    from r1v_ray.grpo.batch import Trajectory
    from r1v_ray.grpo.rollouts import step_requests
    from r1v_ray.grpo.trainer import GRPORun

    sets = {
        "model.dtype": "bfloat16",
        "rollout.backend": "hf",
        "rollout.device": "cuda",
        "rollout.max_model_len": 512,
        "grpo.use_gpu": "true",
        "grpo.num_learners": 1,
        "grpo.colocate": "true",
        "grpo.zero_stage": 3,
        "grpo.learning_rate": 1e-3,
        "grpo.prompts_per_step": 4,
        "grpo.group_size": 4,
        "grpo.max_completion_tokens": 32,
        "grpo.eval_prompts": 4,
        "grpo.eval_every_steps": 100,
        "grpo.drop_zero_variance_groups": "false",
        "grpo.trainable_prefixes": "[projector, llm, lm_head]",
    }
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [f"{k}={v}" for k, v in sets.items()])
    rows = list(iter_rows(32, seed=5))
    data = (os.path.join(work, "grpo-train"), os.path.join(work, "grpo-test"))
    write_split(data[0], 32, seed=5)
    write_split(data[1], 4, seed=5, split="test")
    run = GRPORun(cfg, init, *data, os.path.join(work, "grpo"))
    try:
        results = run.generate(step_requests(run.g, rows[:2], 2, tag=3))
        trajs = [
            Trajectory(step_requests(run.g, [rows[i]], 1, tag=0)[0], c.token_ids, c.logprobs, adv, 0.0)
            for i, res in enumerate(results)
            for c, adv in zip(res.completions, (1.0, -1.0))
        ]
        worker = run.topology.rollout_workers[0]
        before = ray.get(worker.sequence_logprobs.remote(trajs[0].request, trajs[0].completion_ids))
        stats = ray.get(run.topology.learners[0].train_step.remote(trajs))
        check("grpo learner step finite", all(map(lambda v: v == v, stats.values())), stats)
        sync = run.topology.sync_weights()
        learner = ray.get(run.topology.learners[0].logprobs.remote(trajs))
        gaps = []
        for traj, expected in zip(trajs, learner):
            got = ray.get(worker.sequence_logprobs.remote(traj.request, traj.completion_ids))
            gaps.append(max(abs(a - b) for a, b in zip(got, expected)))
        moved = max(abs(a - b) for a, b in zip(before, learner[0]))
        check("grpo weights moved", moved > 3 * BF16_LOGPROB_TOL, f"max |Δ log-prob| before/after update {moved:.3f}")
        check(
            "grpo sync: rollout log-probs equal the learner's",
            max(gaps) < BF16_LOGPROB_TOL,
            f"max |Δ| {max(gaps):.4f} (tolerance {BF16_LOGPROB_TOL}), sync {sync}",
        )
        steps = [run.train_step() for _ in range(2)]
        check(
            "grpo full steps",
            all(s["trajectories"] == 16 for s in steps),
            [{k: round(s[k], 4) for k in ("reward_mean", "loss", "generation_s", "update_s", "sync_s")} for s in steps],
        )
        saved = run.checkpoint()  # ZeRO-3: DeepSpeed state plus an HF export gathered one parameter at a time
    finally:
        run.shutdown()
    resumed = GRPORun(cfg, init, *data, os.path.join(work, "grpo"))
    try:
        check(
            "grpo resumes from its ZeRO-3 checkpoint",
            resumed.step == 2 and resumed.model_path.startswith(saved),
            f"step {resumed.step}, model {resumed.model_path}",
        )
        after = resumed.train_step()
        check(
            "grpo step after resume", after["trajectories"] == 16, {k: round(after[k], 4) for k in ("loss", "sync_s")}
        )
    finally:
        resumed.shutdown()
    return {"max_logprob_gap": max(gaps), "update_moved": moved, "sync": sync, "steps": steps + [after]}


def _zero3_rank(queue, init: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist

    from r1v_ray.engines.learner import LearnerEngine

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.reset_peak_memory_stats()
    engine = LearnerEngine(init, ["projector"], zero_stage=3, use_gpu=True, dtype="bfloat16", device="cuda", world=1)
    load_peak = torch.cuda.max_memory_allocated()
    params = list(engine.model.parameters())
    sharded = all(p.ds_tensor.device.type == "cuda" and p.data.numel() == 0 for p in params)
    engine.start(torch.optim.AdamW(engine.trainable_parameters(), lr=1e-4))
    engine.export_hf(out, 0, {"stage": "gpu-check"}, max_shard_bytes=1 << 20)
    dist.destroy_process_group()
    queue.put({"sharded": sharded, "load_peak": load_peak, "dtypes": sorted({str(p.dtype) for p in params})})


def check_zero3_sharded_load(work: str, init: str) -> dict:
    import multiprocessing as mp
    import socket

    from r1v_ray.model.safetensors_io import INDEX_FILE, checkpoint_tensors, load_tensor

    out = os.path.join(work, "zero3-export")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")  # a fresh process: its own NCCL group and DeepSpeed globals
    queue = ctx.Queue()
    proc = ctx.Process(target=_zero3_rank, args=(queue, init, out, port))
    proc.start()
    got = queue.get(timeout=600)
    proc.join()
    check("zero3 rank exited cleanly", proc.exitcode == 0, proc.exitcode)
    check("zero3 parameters created as CUDA partitions", got["sharded"] and got["dtypes"] == ["torch.bfloat16"], got)
    source = {k: load_tensor(r, torch.bfloat16) for k, r in checkpoint_tensors(init).items()}
    largest = max(t.numel() * 2 for t in source.values())
    bound = sum(t.numel() * 2 for t in source.values()) + largest
    check("zero3 load peak GPU memory", got["load_peak"] <= bound, f"{got['load_peak']} <= {bound} bytes")
    exported = {k: load_tensor(r) for k, r in checkpoint_tensors(out).items()}
    same = set(exported) == set(source) and all(torch.equal(exported[k], source[k]) for k in source)
    check(
        "zero3 export sharded and equal to the checkpoint",
        same and os.path.exists(os.path.join(out, INDEX_FILE)),
        len(exported),
    )
    return {"load_peak_bytes": got["load_peak"], "bound_bytes": bound, "tensors": len(exported)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for gpu_check.json")
    args = ap.parse_args()
    check(
        "CUDA available",
        torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
    )
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    summary["flex_attention"] = check_flex_attention()
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=True)
    try:
        with tempfile.TemporaryDirectory() as work:
            init = write_tiny_checkpoint(work, corpus)  # tiny vision + substitute LLM + fresh projector
            summary["zero3_sharded_load"] = check_zero3_sharded_load(work, init)
            summary["sft"] = check_sft(work, init)
            summary["grpo"] = check_grpo(work, init)
    finally:
        ray.shutdown()
    print(json.dumps(summary, indent=2, default=str))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)


if __name__ == "__main__":
    main()
