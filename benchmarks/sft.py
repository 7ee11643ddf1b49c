"""SFT throughput: padding-free packing against a padded-batch baseline (plain HF-style collation).

Same tiny R1V model, same samples, same batch composition, same optimizer; only the
collation differs. Samples carry reasoning chains of varying length, as adaptive-length
CoT distillation produces (1 to 8 reasoning paragraphs). Tokens/s counts real (non-pad)
tokens. Prints both and the ratio from one run (target >= 1.8x).

    .venv/bin/python benchmarks/sft.py [--samples 96] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.data.synthetic import (
    corpus,  # noqa: E402
    iter_rows,  # noqa: E402
)
from r1v_ray.model import load_checkpoint, set_trainable  # noqa: E402
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402
from r1v_ray.model.varlen import use_varlen_attention  # noqa: E402
from r1v_ray.sft.samples import encode_sample, pack, pad_collate, token_loss_sum  # noqa: E402


def samples(processor, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for row in iter_rows(n, seed=seed, split="bench"):
        row["think"] = "\n".join([row["rationale"]] * rng.randint(1, 8))  # variable-length reasoning
        out.append(encode_sample(row, processor, 4096))
    return out


def run(model, batches, collate) -> tuple[float, int]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = 0
    start = time.perf_counter()
    for batch in batches:
        loss, n = token_loss_sum(model, collate(batch))
        (loss / max(1, n)).backward()
        opt.step()
        opt.zero_grad()
        tokens += sum(len(s["input_ids"]) for s in batch)
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=None, help="tokens per packed row (default: one row per batch)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        ckpt = write_tiny_checkpoint(work, corpus)
        model, processor = load_checkpoint(ckpt)
        set_trainable(model, ["projector", "llm", "lm_head"])
        use_varlen_attention(model)  # packed rows: attention per sample; padded batches: plain SDPA
        model.train()
        data = samples(processor, args.samples)
        batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
        pad_id = processor.tokenizer.pad_token_id
        packed = lambda b: pack(b, args.capacity, pad_id)  # noqa: E731
        run(model, batches[:2], packed)  # warm-up
        padded_tps, tokens = run(model, batches, lambda b: pad_collate(b, pad_id))
        packed_tps, _ = run(model, batches, packed)
    lengths = [len(s["input_ids"]) for s in data]
    padded_total = sum(max(len(s["input_ids"]) for s in b) * len(b) for b in batches)
    print(
        f"workload: {len(data)} samples, batch {args.batch}, lengths {min(lengths)}-{max(lengths)} tokens, "
        f"padding would add {100 * (padded_total / tokens - 1):.0f}% tokens"
    )
    print(f"padded batches : {padded_tps:9.1f} real tokens/s")
    print(f"packed (no pad): {packed_tps:9.1f} real tokens/s")
    print(f"ratio packed/padded: {packed_tps / padded_tps:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
