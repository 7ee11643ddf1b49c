"""Ray Data's parquet readers on the run directory's small datasets: V1 (what `init_ray` selects) against
V2 (Ray 2.60's default), on the reads a pipeline makes a dozen times: a bare read of the synthetic training
split, and the distill stage's query assessment over it (offline judge pool, outputs written). Alternating,
medians of `--repeats` with the range; the ratio is V2's seconds over V1's.

    .venv/bin/python benchmarks/parquet_read.py [--rows 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402
from ray.data import DataContext  # noqa: E402

from r1v_ray.config import load_config  # noqa: E402
from r1v_ray.data.synthetic import write_split  # noqa: E402
from r1v_ray.distill.dataflow import assess  # noqa: E402
from r1v_ray.ray_connect import init_ray  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bare_read(path: str, work: str) -> int:
    return sum(b.num_rows for b in ray.data.read_parquet(path).iter_batches(batch_format="pyarrow"))


def assess_pass(path: str, work: str) -> int:
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), [f"run_dir={work}/run"])
    return assess(cfg, ray.data.read_parquet(path), tempfile.mkdtemp(dir=work))["rows_out"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    init_ray()
    work = tempfile.mkdtemp(prefix="parquet_read_")
    path = os.path.join(work, "train")
    write_split(path, args.rows, seed=0, split="train", image_size=64)
    print(f"{args.rows} synthetic rows (64 px images), {args.repeats} alternating runs per reader")
    for name, fn in (("bare read", bare_read), ("query assessment", assess_pass)):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for v2 in (False, True):
                DataContext.get_current().use_datasource_v2 = v2
                start = time.perf_counter()
                fn(path, work)
                times[v2].append(time.perf_counter() - start)
        v1, v2 = statistics.median(times[False]), statistics.median(times[True])
        ratios = [b / a for a, b in zip(times[False], times[True])]
        print(
            f"{name:17s}: V1 {v1:.2f} s ({min(times[False]):.2f}-{max(times[False]):.2f}), "
            f"V2 {v2:.2f} s ({min(times[True]):.2f}-{max(times[True]):.2f}); "
            f"V2 takes {statistics.median(ratios):.2f}x V1's time ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
