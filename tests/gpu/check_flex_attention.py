"""Packed and shared-prompt attention as CUDA runs it (FlexAttention, compiled, bf16, GQA) against the
padded SDPA kernel (what CPU runs), on one CUDA device (part of check_gpu_paths.py; also runs alone):

    python tests/gpu/check_flex_attention.py

Outputs and q/k/v gradients must stay within twice the padded kernel's own bf16 error (both measured against the
padded kernel in float32); prints max |flex - padded| and the fused kernel's speedup (forward + backward, medians).
The unit tests run the same functions on CPU, small, eager and forward only.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def check(name: str, ok: bool, detail) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        raise SystemExit(f"GPU check failed: {name}: {detail}")


def flex_cases(device, dtype, scale: float = 1.0, seed: int = 0) -> list[dict]:
    """A packed row (SFT: ~16k tokens of samples of 64..2048) and a shared-prompt row (GRPO: 4 prompts of
    ~512 tokens, 8 completions each of 32..1024) with Qwen2-7B's attention shape (28 query heads, 4 key/value
    heads, head_dim 128); `scale` shrinks the lengths."""
    from r1v_ray.model.varlen import SharedPromptLayout

    g = torch.Generator().manual_seed(seed)

    def length(lo: int, hi: int) -> int:
        return max(1, int(int(torch.randint(lo, hi + 1, (), generator=g)) * scale))

    lengths, total = [], int(16384 * scale)
    while sum(lengths) < total:
        lengths.append(min(length(64, 2048), total - sum(lengths)))
    position_ids = torch.tensor([[p for n in lengths for p in range(n)]])
    groups, start = [], 0
    for _ in range(4):
        p_start, p_len, spans = start, length(400, 600), []
        start += p_len
        for _ in range(8):
            spans.append((start, length(32, 1024)))
            start += spans[-1][1]
        groups.append((p_start, p_len, tuple(spans)))
    cases = [("packed", position_ids.shape[1], {"position_ids": position_ids.to(device)})]
    cases.append(("shared_prompt", start, {"r1v_shared_prompts": SharedPromptLayout(tuple(groups))}))
    out = []
    for name, n, kwargs in cases:
        q, k, v = (torch.randn(1, h, n, 128, generator=g).to(device, dtype) for h in (28, 4, 4))
        out.append({"name": name, "tokens": n, "qkv": (q, k, v), "kwargs": kwargs, "scale": 128**-0.5})
    return out


def _attend(case: dict, kernel: str, dtype, compiled: bool, backward: bool, grad_out=None) -> list:
    from r1v_ray.model import varlen

    q, k, v = (t.detach().to(dtype).requires_grad_(backward) for t in case["qkv"])
    kw = case["kwargs"]
    if kernel == "flex":
        args = (kw.get("position_ids"), kw.get("r1v_shared_prompts"), compiled)
        out = varlen._flex_forward(q, k, v, case["scale"], *args)[0]
    else:
        out = varlen._varlen_forward("padded", None, q, k, v, None, scaling=case["scale"], **kw)[0]
    if not backward:
        return [out]
    out.backward(grad_out.to(dtype))
    return [out, q.grad, k.grad, v.grad]


def _median_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)


def compare_flex(case: dict, compiled: bool, backward: bool, repeats: int = 5) -> dict:
    """Max |flex - padded| and each one's max error against the padded kernel in float32, per output and gradient, and
    the padded/flex time ratio (the block mask is built once per forward and shared by all layers; its build
    time is reported on its own)."""
    from r1v_ray.model import varlen

    dtype = case["qkv"][0].dtype
    q = case["qkv"][0]
    grad_out = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(q.device)
    names = ["out", "dq", "dk", "dv"] if backward else ["out"]
    reference = _attend(case, "padded", torch.float32, False, backward, grad_out)
    got = {kernel: _attend(case, kernel, dtype, compiled, backward, grad_out) for kernel in ("padded", "flex")}
    err = {k: {n: (a.float() - r).abs().max().item() for n, a, r in zip(names, v, reference)} for k, v in got.items()}
    diff = {n: (a.float() - b.float()).abs().max().item() for n, a, b in zip(names, got["flex"], got["padded"])}
    timed = {k: _median_seconds(lambda k=k: _attend(case, k, dtype, compiled, backward, grad_out), repeats)
             for k in ("padded", "flex")}  # fmt: skip
    median = {k: t[len(t) // 2] for k, t in timed.items()}
    kw, n = case["kwargs"], case["tokens"]
    mask_s = _median_seconds(
        lambda: varlen._block_mask(1, n, q.device, kw.get("position_ids"), kw.get("r1v_shared_prompts"), compiled),
        repeats,
    )
    return {
        "tokens": case["tokens"],
        "max_abs_diff": diff,
        "error_vs_fp32": err,
        "padded_s": median["padded"],
        "flex_s": median["flex"],
        "speedup": median["padded"] / median["flex"],
        "range_s": {k: [t[0], t[-1]] for k, t in timed.items()},
        "mask_build_s": mask_s[len(mask_s) // 2],
    }


def check_flex_attention(device="cuda", dtype=torch.bfloat16, scale=1.0, compiled=True, backward=True, repeats=5):
    """As CUDA runs it by default; the unit tests run it on CPU, small, eager and forward only."""
    results = {}
    for case in flex_cases(device, dtype, scale):
        got = compare_flex(case, compiled, backward, repeats)
        worst = {
            n: got["error_vs_fp32"]["flex"][n] / max(got["error_vs_fp32"]["padded"][n], 1e-3)
            for n in got["max_abs_diff"]
        }
        check(
            f"flex attention ({case['name']}, {case['tokens']} tokens) matches the padded kernel",
            max(worst.values()) <= 2.0,
            f"max |flex - padded| {got['max_abs_diff']}, error vs fp32 {got['error_vs_fp32']}",
        )
        print(
            f"  {case['name']}: padded {got['padded_s']:.4f}s, flex {got['flex_s']:.4f}s, speedup {got['speedup']:.2f}x"
        )
        results[case["name"]] = got
    return results


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("check_flex_attention: no CUDA device")
    print(json.dumps(check_flex_attention(), indent=2))
