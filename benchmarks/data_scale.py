"""Memory against dataset size: the training stages' data paths at N and 10·N rows (target <= 1.2x each).

A synthetic split with realistic images (448 px noise-textured JPEGs of ~100 KB, every row's bytes
unique) is written at N and 10·N rows. Each measured step runs in a fresh process that reports its
peak RSS, on the same classes the stages use:

* selection: D_rm(tau) ∪ E streamed through SFT's length filter into the run's training data
  (`data.select`, `sft.data.filter_by_length`), E being 10% of the rows' ids;
* SFT worker: one rank of two reading and encoding its rows of the first steps (`sft.data.WorkerShard`,
  `sft.samples.encode_sample`), as `train_loop_per_worker` does before its forward pass;
* GRPO driver: D_rm(tau = 5) written as GRPO's prompt set, then the first steps' prompts drawn and their
  rows read and turned into generation requests (`grpo.sampler.PromptSampler`, `data.io.RowReader`,
  `prompts.paper_request`), as `RolloutCollector.collect` does before it calls the rollout workers.

Prints each step's peak RSS at both sizes and the ratio RSS(10·N) / RSS(N), as medians of --runs runs
with the range.

    .venv/bin/python benchmarks/data_scale.py [--rows 2000] [--runs 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = ("selection", "sft_worker", "grpo_driver")
# Row groups of the input split: Hugging Face `datasets` writes image datasets in groups of 100 rows (so
# that a reader holds a few MB, not a file); 128 rows of ~100 KB is ~13 MB.
ROW_GROUP = 128
TARGET = 1.2


def _noise_jpegs(k: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        pixels = np.clip(rng.integers(64, 192, (1, 1, 3)) + rng.normal(0, 32, (448, 448, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_split(uri: str, n: int, seed: int = 0) -> None:
    """n rows of the synthetic task with ~100 KB images, ROW_GROUP rows per row group; a unique trailer after each JPEG's end marker
    (decoders ignore it) makes every row's bytes distinct, so nothing dedupes them."""
    import pyarrow as pa

    from r1v_ray.data.io import ParquetSink
    from r1v_ray.data.schema import canonical_table
    from r1v_ray.data.synthetic import make_row

    pool = _noise_jpegs(64, seed)
    scores = np.random.default_rng(seed).integers(0, 6, n)
    with ParquetSink(uri, rows_per_file=1024, row_group_rows=ROW_GROUP) as sink:
        for start in range(0, n, 256):
            rows = []
            for i in range(start, min(n, start + 256)):
                row = make_row(seed, "train", i)
                row["image"] = pool[i % len(pool)] + i.to_bytes(8, "little")
                rows.append(row)
            table = canonical_table(rows)
            sink.write(table.append_column("rm_score", pa.array(scores[start : start + len(rows)], pa.int64())))


def _selection(data: str, ckpt: str, work: str, steps: int) -> None:
    from transformers import AutoProcessor

    from r1v_ray.data.io import iter_batches
    from r1v_ray.data.select import d_rm, with_errors
    from r1v_ray.sft.data import filter_by_length

    ids = [i for b in iter_batches(data, columns=["id"]) for i in b.column("id").to_pylist()[::10]]
    selection = with_errors(d_rm(data, "rm_score", 3), ids)
    processor = AutoProcessor.from_pretrained(ckpt)
    filter_by_length(selection, processor, 4096, os.path.join(work, "sft_data"), os.path.join(work, "rej"), "bench")


def _sft_worker(data: str, ckpt: str, work: str, steps: int) -> None:
    from transformers import AutoProcessor

    from r1v_ray.sft.data import StepLayout, WorkerShard
    from r1v_ray.sft.samples import encode_sample

    processor = AutoProcessor.from_pretrained(ckpt)
    shard = WorkerShard(os.path.join(work, "sft_data"), StepLayout(64, 4, 2), seed=0, rank=0, world=2)
    for step in range(steps):
        [[encode_sample(r, processor, 4096) for r in m] for m in shard.rows(step)]


def _grpo_driver(data: str, ckpt: str, work: str, steps: int) -> None:
    from r1v_ray.data.io import RowReader
    from r1v_ray.data.select import d_rm
    from r1v_ray.grpo.sampler import PromptSampler
    from r1v_ray.prompts import paper_request

    prompts = os.path.join(work, "grpo_data")
    d_rm(data, "rm_score", 5).write(prompts)
    rows = RowReader(prompts)
    sampler = PromptSampler(len(rows), seed=0)
    for step in range(steps):
        batch = rows.take(sampler.take(min(64, len(rows))))
        [paper_request(r, 8, 512, 1.0, 1.0, seed=step) for r in batch]


def _measure(step: str, data: str, ckpt: str, work: str, steps: int) -> int:
    """Run one step in a fresh process; its peak RSS in bytes."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[1]); import benchmarks.data_scale as b; "
        "getattr(b, '_' + sys.argv[2])(*sys.argv[3:6], int(sys.argv[6])); "
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", code, root, step, data, ckpt, work, str(steps)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000, help="N (the larger size is 10·N)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="SFT / GRPO steps read in each measurement")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir; needs ~2.5 GB at N=2000)")
    args = ap.parse_args()
    from r1v_ray.data.synthetic import corpus
    from r1v_ray.model.factory import write_tiny_checkpoint

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        ckpt = write_tiny_checkpoint(work, corpus)
        sizes = {"N": args.rows, "10N": 10 * args.rows}
        rss: dict[str, dict[str, list[int]]] = {s: {k: [] for k in sizes} for s in STEPS}
        for label, n in sizes.items():
            data = os.path.join(work, f"data-{label}")
            write_split(data, n)
            mb = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data)) / 2**20
            print(f"{label}: {n} rows, {mb:.0f} MiB of Parquet")
            for run in range(args.runs):
                scratch = os.path.join(work, f"run-{label}-{run}")
                for step in STEPS:
                    os.makedirs(scratch, exist_ok=True)
                    rss[step][label].append(_measure(step, data, ckpt, scratch, args.steps))
                subprocess.run(["rm", "-rf", scratch], check=True)
        print(f"\npeak RSS, medians of {args.runs} runs (range); ratio target <= {TARGET}x")
        print(f"{'step':<12} {'N (MiB)':>14} {'10N (MiB)':>14} {'ratio':>18}")
        for step in STEPS:
            small, large = rss[step]["N"], rss[step]["10N"]
            ratios = sorted(b / a for a, b in zip(small, large))
            mib = lambda v: f"{statistics.median(v) / 2**20:.0f}"  # noqa: E731
            verdict = "ok" if statistics.median(ratios) <= TARGET else "ABOVE TARGET"
            print(
                f"{step:<12} {mib(small):>14} {mib(large):>14} "
                f"{statistics.median(ratios):>6.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) {verdict}"
            )


if __name__ == "__main__":
    main()
