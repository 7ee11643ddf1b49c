"""The n samples of a prompt sharing its KV blocks: vLLM CPU with the engine's 32-token blocks against vLLM's
CPU default of 128, on an evaluation's workload (the paper prompt, k = 5 sampled runs per row, T = 0.6).

Prefix caching shares whole blocks only; the tiny model's paper prompts are ~127 tokens, so at 128 each of a
row's k samples computes the whole prompt. Each engine runs in its own process (one in-process vLLM engine
per process), the two alternating; prints rows/s of each, the ratio per run and the median with its range.

    .venv/bin/python benchmarks/prefix_sharing.py [--rows 200] [--runs 3] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(block_size: int, rows: int, max_tokens: int, work: str) -> dict:
    from r1v_ray.config import RolloutConfig
    from r1v_ray.data.synthetic import corpus, make_row
    from r1v_ray.engines.rollout import make_engine, vllm_engine
    from r1v_ray.model.factory import write_tiny_checkpoint
    from r1v_ray.prompts import paper_request

    vllm_engine.CPU_BLOCK_SIZE = block_size  # read by engine_kwargs when the engine starts
    ckpt = write_tiny_checkpoint(work, corpus)
    engine = make_engine(ckpt, RolloutConfig(backend="vllm", device="cpu", max_model_len=1024), "float32")
    reqs = [paper_request(make_row(0, "bench", i), 5, max_tokens, 0.6, 1.0, seed=0) for i in range(rows)]
    engine.generate(reqs[:2])  # warm-up
    start = time.perf_counter()
    results = engine.generate(reqs)
    seconds = time.perf_counter() - start
    return {
        "rows_per_s": rows / seconds,
        "seconds": seconds,
        "prompt_tokens": statistics.mean(r.prompt_tokens for r in results),
        "cached_prompt_tokens": statistics.mean(r.cached_prompt_tokens for r in results),
    }


def spawn(block_size: int, args) -> dict:
    cmd = [sys.executable, __file__, "--one-run", str(block_size)]
    cmd += ["--rows", str(args.rows), "--max-tokens", str(args.max_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--one-run", type=int, help=argparse.SUPPRESS)  # one run at this block size, as JSON
    args = ap.parse_args()
    if args.one_run:
        with tempfile.TemporaryDirectory() as work:
            os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(work, "vllm"))
            print("RESULT " + json.dumps(one_run(args.one_run, args.rows, args.max_tokens, work)))
        return
    print(f"workload: {args.rows} paper prompts x 5 samples, max_tokens={args.max_tokens}, T=0.6, tiny R1V fp32")
    ratios = []
    for i in range(args.runs):
        shared, default = spawn(32, args), spawn(128, args)
        ratios.append(shared["rows_per_s"] / default["rows_per_s"])
        for name, r in (("32-token blocks ", shared), ("128-token blocks", default)):
            print(
                f"run {i + 1} {name}: {r['rows_per_s']:6.2f} rows/s ({r['seconds']:.1f} s), prompt "
                f"{r['prompt_tokens']:.0f} tokens, {r['cached_prompt_tokens']:.0f} of them from the prefix cache"
            )
        print(f"run {i + 1} ratio 32/128: {ratios[-1]:.2f}x")
    print(f"median over {len(ratios)} runs: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
