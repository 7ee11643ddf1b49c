"""Judge throughput: rows/s with 32 judge requests in flight against one at a time.

The judge is the OpenAI client path of r1v_ray (`RMScore`, the callable Ray Data runs
in the scoring stage: thread pool, concurrency slots, token bucket, retries, usage
counting) against the local OpenAI-compatible server with a fixed 200 ms latency;
cache off, rate limit out of the way. Prints both and the ratio from one run
(target >= 20x).

    .venv/bin/python benchmarks/distill.py [--latency 0.2] [--rows 320]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.config import JudgeConfig  # noqa: E402
from r1v_ray.data.schema import canonical_table  # noqa: E402
from r1v_ray.data.synthetic import iter_rows  # noqa: E402
from r1v_ray.distill.udfs import RMScore  # noqa: E402
from r1v_ray.engines.judge.fake_server import FakeJudgeServer  # noqa: E402


def rows_per_s(base_url: str, concurrency: int, table: pa.Table, batch: int = 32) -> float:
    cfg = JudgeConfig(
        kind="openai", base_url=base_url, max_concurrency=concurrency, requests_per_second=10_000, timeout_s=30
    )
    udf = RMScore(cfg, None, 1, "bench-key")
    start = time.perf_counter()
    for offset in range(0, table.num_rows, batch):
        out = udf(table.slice(offset, batch))
        assert out.column("error").null_count == out.num_rows, "a judge call failed"
    return table.num_rows / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rows", type=int, default=320)
    args = ap.parse_args()
    table = canonical_table(list(iter_rows(args.rows, seed=0, split="bench")))
    with FakeJudgeServer(latency_s=args.latency) as server:
        serial = rows_per_s(server.base_url, 1, table.slice(0, 32))  # 32 rows are enough at one at a time
        concurrent = rows_per_s(server.base_url, 32, table)
    print(f"judge latency {args.latency * 1000:.0f} ms")
    print(f"one request at a time : {serial:8.2f} rows/s")
    print(f"32 requests in flight : {concurrent:8.2f} rows/s")
    print(f"ratio                 : {concurrent / serial:8.2f}x (target >= 20x)")


if __name__ == "__main__":
    main()
