"""Packed-row attention on CPU: FlexAttention (eager and compiled) against the per-sample SDPA loop.

Same random queries/keys/values (the tiny model's attention shape by default: 4 query heads, 2 key/value
heads, head_dim 32), forward only (torch has no FlexAttention backward on CPU). For each layout prints the
median and range over --repeats of one layer's attention, the block mask's build time (once per forward,
shared by the layers), and the ratio loop / flex per forward of a --layers model, from the same run.
CUDA runs the compiled path; tests/gpu/check_gpu_paths.py measures it there, with backward.

    .venv/bin/python benchmarks/varlen_attention.py [--repeats 7] [--layers 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.model import varlen  # noqa: E402
from r1v_ray.model.varlen import SharedPromptLayout  # noqa: E402


def cases(seed: int = 0) -> list[tuple[str, int, dict]]:
    """An SFT packed row (8 samples of 100..600 tokens) and a GRPO shared-prompt row (4 prompts of 200 tokens,
    8 completions each of 20..200)."""
    rng = random.Random(seed)
    lengths = [rng.randint(100, 600) for _ in range(8)]
    position_ids = torch.tensor([[p for n in lengths for p in range(n)]])
    groups, start = [], 0
    for _ in range(4):
        p_start, spans = start, []
        start += 200
        for _ in range(8):
            spans.append((start, rng.randint(20, 200)))
            start += spans[-1][1]
        groups.append((p_start, 200, tuple(spans)))
    return [
        ("packed", sum(lengths), {"position_ids": position_ids}),
        ("shared_prompt", start, {"r1v_shared_prompts": SharedPromptLayout(tuple(groups))}),
    ]


def seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def show(name: str, times: list[float]) -> str:
    return f"{name} {times[len(times) // 2] * 1e3:.1f} ms [{times[0] * 1e3:.1f}-{times[-1] * 1e3:.1f}]"


def bench(tokens: int, kwargs: dict, args) -> None:
    g = torch.Generator().manual_seed(0)
    heads = (args.heads, args.kv_heads, args.kv_heads)
    q, k, v = (torch.randn(1, h, tokens, args.head_dim, generator=g) for h in heads)
    scale = args.head_dim**-0.5
    pos, layout = kwargs.get("position_ids"), kwargs.get("r1v_shared_prompts")
    with torch.no_grad():
        reference = varlen._varlen_forward("loop", None, q, k, v, None, scaling=scale, **kwargs)[0]
        loop = seconds(
            lambda: varlen._varlen_forward("loop", None, q, k, v, None, scaling=scale, **kwargs), args.repeats
        )
        print(f"  {show('loop', loop)} per layer", flush=True)
        for compiled in (False, True):
            start = time.perf_counter()
            diff = (varlen._flex_forward(q, k, v, scale, pos, layout, compiled)[0] - reference).abs().max().item()
            first = time.perf_counter() - start  # compiles where compiled
            flex = seconds(lambda c=compiled: varlen._flex_forward(q, k, v, scale, pos, layout, c), args.repeats)
            mask = seconds(lambda c=compiled: varlen._block_mask(1, tokens, "cpu", pos, layout, c), args.repeats)
            loop_s, flex_s, mask_s = (t[len(t) // 2] for t in (loop, flex, mask))
            print(
                f"  {show('flex_' + ('compiled' if compiled else 'eager'), flex)} per layer (mask cached), "
                f"{show('mask build', mask)}, first call {first:.2f} s, max |diff| vs loop {diff:.1e}; "
                f"loop/flex: per layer {loop_s / flex_s:.2f}x, per {args.layers}-layer forward "
                f"{loop_s * args.layers / (mask_s + flex_s * args.layers):.2f}x",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", type=int, default=2, help="layers sharing one block mask per forward (tiny model: 2)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} [range]")
    for name, tokens, kwargs in cases():
        print(f"{name}: {tokens} tokens", flush=True)
        bench(tokens, kwargs, args)


if __name__ == "__main__":
    main()
