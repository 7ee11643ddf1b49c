"""Cost of the answer-check deadline: math-verify in a reused worker process against math-verify in-process.

Scores the same normal answers both ways (plain numbers, the common case in GRPO, then a mix with
fractions, roots and polynomials), several runs each, and prints the
median per-check time of each with its range, and the ratio and the difference (the per-call
overhead of the pipe round trip).

    .venv/bin/python benchmarks/answer_check.py [--checks 500] [--runs 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray import answer_check  # noqa: E402


def in_process(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    return bool(g and p and verify(g, p, timeout_seconds=None))


def pairs(n: int) -> list[tuple[str, str]]:
    kinds = [
        lambda i: (str(i), str(i + 1)),
        lambda i: (f"\\frac{{{2 * i}}}{{4}}", f"{i / 2}"),
        lambda i: (f"{i}\\sqrt{{2}}", f"\\sqrt{{{2 * i * i}}}"),
        lambda i: (f"x^{{{i % 5}}}+1", "x+1"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def per_check_us(fn, cases) -> float:
    start = time.perf_counter()
    for pred, gold in cases:
        fn(pred, gold)
    return (time.perf_counter() - start) / len(cases) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    for name, cases in (("numbers", [(str(i), str(i + 1)) for i in range(args.checks)]), ("mixed", pairs(args.checks))):
        in_process(*cases[0]), answer_check.math_equal(*cases[0])  # warm both: imports, worker start
        assert [in_process(*c) for c in cases[:40]] == [answer_check.math_equal(*c) for c in cases[:40]]
        base, pooled = [], []
        for _ in range(args.runs):  # interleaved, so load from elsewhere hits both alike
            base.append(per_check_us(in_process, cases))
            pooled.append(per_check_us(answer_check.math_equal, cases))
        b, p = statistics.median(base), statistics.median(pooled)
        print(f"{name}: in-process math-verify {b:8.1f} us/check (range {min(base):.1f}-{max(base):.1f})")
        print(f"{name}: worker with deadline   {p:8.1f} us/check (range {min(pooled):.1f}-{max(pooled):.1f})")
        print(f"{name}: ratio {p / b:.2f}x, overhead {p - b:+.1f} us/check ({args.runs} runs of {args.checks} checks)")


if __name__ == "__main__":
    main()
