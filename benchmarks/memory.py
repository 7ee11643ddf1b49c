"""Host memory at real sizes: re-assembly, ZeRO-3 learner ranks, and the HF export.

Builds a medium model of the paper's architecture with random weights, bf16, saved as HF checkpoints
through the project's factory config classes scaled up: an InternViT-300M-shaped vision tower (hidden 1024,
24 layers, 448 px, patch 14) and two Qwen2-1.5B-shaped LLMs (hidden 1536, 28 layers, vocabulary 151936,
tied embeddings), the substitute and the reasoning one. Then, each in a fresh process, it measures the peak
resident set (VmHWM) of

* re-assembly (`reassemble_checkpoint`: the assembled model's vision tower and projector onto the
  reasoning LLM), target <= 1.3x;
* each of 2 ZeRO-3 learner ranks (gloo, CPU) loading the re-assembled model and starting DeepSpeed with
  the projector trainable, target <= 0.75x;
* the HF export on those ranks (peak reset after loading: gathered one parameter at a time, streamed into
  shards on rank 0), target <= 1.3x;

each printed as a ratio to the model's own bf16 bytes. Peaks include the interpreter and its imports
(printed on their own as a reference). Needs ~17 GB of disk and ~3 GB of RAM per ZeRO-3 rank.

    .venv/bin/python benchmarks/memory.py [--work DIR] [--repeats 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GB = 1e9


def peak_rss() -> int:
    """This process's resident high-water mark, bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: the high-water mark restarts from the current resident set


# --------------------------------------------------------------------------- the model


def configs(tokenizer, layers: int | None = None):
    from r1v_ray.config import TinyModelConfig
    from r1v_ray.model.factory import tiny_text_config, tiny_vision_config

    t = TinyModelConfig(
        image_size=448,
        patch_size=14,
        vision_hidden=1024,
        vision_layers=layers or 24,
        vision_heads=16,
        text_hidden=1536,
        text_layers=layers or 28,
        text_heads=12,
        text_kv_heads=2,
        text_intermediate=8960,
        max_position_embeddings=32768,
    )
    vision = tiny_vision_config(t)
    vision.intermediate_size = 4096  # InternViT's MLP ratio 4
    text = tiny_text_config(t, tokenizer)
    text.vocab_size, text.tie_word_embeddings = 151936, True  # Qwen2-1.5B
    return vision, text


def write_random_part(config, path: str, seed: int, tokenizer=None) -> None:
    """An HF checkpoint of `config` with random bf16 weights, written one tensor at a time."""
    import torch

    from r1v_ray.model.assemble import meta_skeleton, saved_keys, streamed_checkpoint

    skeleton = meta_skeleton(config)
    if tokenizer is not None:
        skeleton.generation_config.eos_token_id = tokenizer.eos_token_id
        skeleton.generation_config.pad_token_id = tokenizer.pad_token_id
    state = skeleton.state_dict()
    specs = {n: (torch.bfloat16, tuple(t.shape)) for n, t in state.items()}
    gen = torch.Generator().manual_seed(seed)
    with streamed_checkpoint(skeleton, specs, None, path) as write:
        for name in saved_keys(skeleton):  # tied copies are written once
            t = state[name]
            if name.endswith("norm.weight") or "layernorm" in name:
                write(name, torch.ones(t.shape, dtype=torch.bfloat16))
            else:
                write(name, torch.empty(t.shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def build(work: str, layers: int | None = None) -> dict:
    from r1v_ray.data.synthetic import corpus
    from r1v_ray.model.tokenizer import train_bpe_tokenizer

    sub_tok = train_bpe_tokenizer(corpus(400, seed=0), 640, with_image_tokens=True)
    reason_tok = train_bpe_tokenizer(corpus(300, seed=7), 576, with_image_tokens=False)
    vision, text = configs(sub_tok, layers)
    paths = {n: os.path.join(work, n) for n in ("vision", "substitute_llm", "reasoning_llm")}
    write_random_part(vision, paths["vision"], 1)
    write_random_part(text, paths["substitute_llm"], 2, sub_tok)
    text.eos_token_id, text.pad_token_id = reason_tok.eos_token_id, reason_tok.pad_token_id
    write_random_part(text, paths["reasoning_llm"], 3, reason_tok)
    return paths


# --------------------------------------------------------------------------- measured steps


def _baseline(queue) -> None:
    import deepspeed  # noqa: F401
    import transformers  # noqa: F401

    import r1v_ray.engines.learner  # noqa: F401
    import r1v_ray.model.reassemble  # noqa: F401

    queue.put(peak_rss())


def _assemble(queue, parts: dict, out: str) -> None:
    from r1v_ray.config import ProjectorConfig
    from r1v_ray.model.assemble import assemble_from_parts

    assemble_from_parts(parts["vision"], parts["substitute_llm"], out, ProjectorConfig(), 12, 0)
    queue.put(peak_rss())


def _reassemble(queue, source: str, llm: str, out: str) -> None:
    from r1v_ray.model.reassemble import reassemble_checkpoint

    reassemble_checkpoint(source, llm, out, 12)
    queue.put(peak_rss())


def _rank(rank: int, world: int, port: int, checkpoint: str, out: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    import torch
    import torch.distributed as dist

    from r1v_ray.engines.learner import LearnerEngine

    dist.init_process_group("gloo", rank=rank, world_size=world)
    engine = LearnerEngine(
        checkpoint, ["projector"], zero_stage=3, use_gpu=False, dtype="bfloat16", device="cpu", world=world
    )
    engine.start(torch.optim.AdamW(engine.trainable_parameters(), lr=1e-5))
    held = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in engine.model.parameters())
    dist.barrier()
    load = peak_rss()
    reset_peak_rss()
    engine.export_hf(out, rank, {"stage": "benchmark"})
    dist.barrier()
    with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
        json.dump({"load": load, "export": peak_rss(), "held": held}, f)
    dist.destroy_process_group()


def in_fresh_process(target, *args) -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    value = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")
    return value


def zero3_ranks(checkpoint: str, out: str, work: str, world: int = 2) -> list[dict]:
    import torch.multiprocessing as tmp

    results = tempfile.mkdtemp(dir=work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.spawn(_rank, args=(world, port, checkpoint, out, results), nprocs=world, join=True)
    ranks = []
    for r in range(world):
        with open(os.path.join(results, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    return ranks


# --------------------------------------------------------------------------- report


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}x" + (
        f" (range {min(values):.2f}-{max(values):.2f}, {len(values)} runs)" if len(values) > 1 else ""
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="folder for the checkpoints (~17 GB); default: a temporary one")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each measurement (median and range)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--layers", type=int, default=None, help="a shallower model, to check the script quickly")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="r1v-memory-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.time()
        parts = build(work, args.layers)
        assembled = os.path.join(work, "assembled")
        assemble_peak = in_fresh_process(_assemble, parts, assembled)
        print(f"built the parts and assembled in {time.time() - t0:.0f} s", flush=True)

        from r1v_ray.model.safetensors_io import checkpoint_tensors

        figures = {"reassemble": [], "rank": [], "export": []}
        for i in range(args.repeats):
            reassembled = os.path.join(work, f"reassembled-{i}")
            figures["reassemble"].append(in_fresh_process(_reassemble, assembled, parts["reasoning_llm"], reassembled))
            ranks = zero3_ranks(reassembled, os.path.join(work, f"export-{i}"), work)
            figures["rank"].append(max(r["load"] for r in ranks))
            figures["export"].append(max(r["export"] for r in ranks))
            shutil.rmtree(os.path.join(work, f"export-{i}"))
            if i:
                shutil.rmtree(reassembled)
        refs = checkpoint_tensors(os.path.join(work, "reassembled-0"))
        params = sum(math.prod(r.shape) for r in refs.values())
        bf16 = 2 * params
        llm = sum(math.prod(r.shape) for k, r in refs.items() if k.startswith("language_model."))
        base = in_fresh_process(_baseline)

        def x(v: float) -> float:
            return v / bf16

        print(f"model: {params / 1e9:.2f}B parameters ({llm / 1e9:.2f}B LLM); its bf16 bytes: {bf16 / GB:.2f} GB")
        print(f"imports alone (torch, transformers, deepspeed, r1v_ray): {base / GB:.2f} GB = {x(base):.2f}x")
        print(f"assembly peak RSS: {assemble_peak / GB:.2f} GB = {x(assemble_peak):.2f}x")
        print(f"re-assembly peak RSS: {summary([x(v) for v in figures['reassemble']])}  (target <= 1.3x)")
        held = max(r["held"] for r in ranks)
        print(
            f"ZeRO-3 rank peak RSS, 2 ranks, load + deepspeed.initialize: {summary([x(v) for v in figures['rank']])}"
            f"  (target <= 0.75x; partitions held {x(held):.2f}x)"
        )
        print(
            f"ZeRO-3 export peak RSS (max over ranks): {summary([x(v) for v in figures['export']])}  (target <= 1.3x)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
