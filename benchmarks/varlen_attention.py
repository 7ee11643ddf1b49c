"""Packed-row attention on CPU: FlexAttention (eager and compiled) against the padded SDPA kernel (what CPU trains with).

Same random queries/keys/values (the tiny model's attention shape by default: 4 query heads, 2 key/value
heads, head_dim 32), forward only (torch has no FlexAttention backward on CPU). For each layout prints one
layer's attention time, the block mask's build time (once per forward, shared by the layers), and the
ratios padded / flex per layer and per forward of a --layers model: medians over --repeats with the range,
each repeat timing all variants back to back.
CUDA runs the compiled path; tests/gpu/check_gpu_paths.py measures it there, with backward.

    .venv/bin/python benchmarks/varlen_attention.py [--repeats 5] [--layers 2]
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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    values = sorted(values)
    return f"{fmt.format(values[len(values) // 2])} [{fmt.format(values[0])}-{fmt.format(values[-1])}]"


def bench(tokens: int, kwargs: dict, args) -> None:
    """Each repeat times every variant back to back, so load changes on the shared host hit them alike; the
    ratios are per repeat, then their median and range."""
    g = torch.Generator().manual_seed(0)
    heads = (args.heads, args.kv_heads, args.kv_heads)
    q, k, v = (torch.randn(1, h, tokens, args.head_dim, generator=g) for h in heads)
    scale = args.head_dim**-0.5
    pos, layout = kwargs.get("position_ids"), kwargs.get("r1v_shared_prompts")
    runs = {"padded": lambda: varlen._varlen_forward("padded", None, q, k, v, None, scaling=scale, **kwargs)[0]}
    for name, compiled in (("flex_eager", False), ("flex_compiled", True)):
        runs[name] = lambda c=compiled: varlen._flex_forward(q, k, v, scale, pos, layout, c)[0]
        runs[name + "_mask"] = lambda c=compiled: varlen._block_mask(1, tokens, torch.device("cpu"), pos, layout, c)
    with torch.no_grad():
        reference = runs["padded"]()
        for name in ("flex_eager", "flex_compiled"):
            start = time.perf_counter()
            diff = (runs[name]() - reference).abs().max().item()
            runs[name + "_mask"]()
            print(f"  {name}: first call (compiles where compiled) {time.perf_counter() - start:.2f} s, "
                  f"max |diff| vs padded {diff:.1e}", flush=True)  # fmt: skip
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
    print(f"  padded {spread([t * 1e3 for t in times['padded']], '{:.1f}')} ms per layer", flush=True)
    for name in ("flex_eager", "flex_compiled"):
        layer = [a / b for a, b in zip(times["padded"], times[name])]
        forward = [
            a * args.layers / (m + b * args.layers)
            for a, b, m in zip(times["padded"], times[name], times[name + "_mask"])
        ]
        print(
            f"  {name} {spread([t * 1e3 for t in times[name]], '{:.1f}')} ms per layer (mask cached), mask build "
            f"{spread([t * 1e3 for t in times[name + '_mask']], '{:.1f}')} ms; padded/flex per layer {spread(layer)}x, "
            f"per {args.layers}-layer forward {spread(forward)}x",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2, help="layers sharing one block mask per forward (tiny model: 2)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} [range]", flush=True
    )
    for name, tokens, kwargs in cases():
        print(f"{name}: {tokens} tokens", flush=True)
        bench(tokens, kwargs, args)


if __name__ == "__main__":
    main()
