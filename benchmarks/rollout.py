"""Rollout throughput: the vLLM engine against HF `generate`, same tiny model, prompts and sampling.

Prints tokens/s for both and their ratio from one run (target on a 2-core CPU: >= 2.5x).
HF runs first: an in-process vLLM pins torch to one thread for the rest of the process.

    .venv/bin/python benchmarks/rollout.py [--prompts 32] [--n 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from r1v_ray.config import RolloutConfig
from r1v_ray.data.synthetic import corpus, make_row
from r1v_ray.engines.rollout import GenerationRequest, Sampling, make_engine
from r1v_ray.model.factory import write_tiny_checkpoint


def requests(n_prompts: int, n: int, max_tokens: int) -> list[GenerationRequest]:
    out = []
    for i in range(n_prompts):
        row = make_row(0, "bench", i)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        out.append(
            GenerationRequest(msgs, [row["image"]], Sampling(n=n, temperature=1.0, max_tokens=max_tokens, seed=i))
        )
    return out


def tokens_per_second(engine, reqs) -> tuple[float, int, float]:
    engine.generate(reqs[:2])  # warm-up
    start = time.perf_counter()
    results = engine.generate(reqs)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for r in results for c in r.completions)
    return tokens / seconds, tokens, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(work, "vllm"))
        ckpt = write_tiny_checkpoint(work, corpus)
        reqs = requests(args.prompts, args.n, args.max_tokens)
        cfg = dict(device="cpu", max_model_len=1024, cpu_kvcache_gib=1)
        hf_tps, hf_tok, hf_s = tokens_per_second(make_engine(ckpt, RolloutConfig(backend="hf", **cfg), "float32"), reqs)
        vl_tps, vl_tok, vl_s = tokens_per_second(
            make_engine(ckpt, RolloutConfig(backend="vllm", **cfg), "float32"), reqs
        )
    print(f"workload: {args.prompts} image prompts x n={args.n}, max_tokens={args.max_tokens}, T=1.0, tiny R1V fp32")
    print(f"HF generate : {hf_tps:9.1f} tok/s ({hf_tok} tokens in {hf_s:.2f}s)")
    print(f"vLLM engine : {vl_tps:9.1f} tok/s ({vl_tok} tokens in {vl_s:.2f}s)")
    print(f"ratio vLLM/HF: {vl_tps / hf_tps:.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
