"""SFT datasets: a selection streamed through the context-length filter, and each worker's rows of a step.

The training data of one SFT run is written once (rows that fit `sft.max_length`, small row groups;
the others to `rejected` with the reason). Workers then read it by position: the data order is a pure
function of (seed, epoch) over row positions, and a rank reads only the rows of its share of a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from r1v_ray.data.io import ParquetSink, RowReader, dataset_schema
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.data.select import RANDOM_ACCESS_ROW_GROUP, Selection
from r1v_ray.prompts import PromptBuilder
from r1v_ray.sft.samples import sample_tokens


def filter_by_length(
    selection: Selection, processor, max_length: int, out_uri: str, rejected_uri: str, stage: str
) -> dict:
    """Write the selected rows that fit `max_length` to out_uri and the others to rejected_uri with the reason."""
    builder = PromptBuilder(processor, max_length)
    kept = rejected = 0
    with (
        ParquetSink(out_uri, schema=dataset_schema(selection.uri), row_group_rows=RANDOM_ACCESS_ROW_GROUP) as out,
        ParquetSink(rejected_uri, schema=REJECTED_SCHEMA) as rej,
    ):
        for batch in selection.batches(batch_size=256):
            rows = batch.to_pylist()
            lengths = [sample_tokens(r, processor, builder) for r in rows]
            ok = [n <= max_length for n in lengths]
            out.write(pa.Table.from_batches([batch]).filter(pa.array(ok, pa.bool_())))
            bad = [
                {
                    "id": str(r["id"]),
                    "stage": stage,
                    "row": None,
                    "image": None,
                    "reason": f"too long: {n} tokens > sft.max_length {max_length} (never cut through image tokens)",
                }
                for r, n, fits in zip(rows, lengths, ok)
                if not fits
            ]
            if bad:
                rej.write(rejected_table(bad))
            kept += sum(ok)
            rejected += len(bad)
    return {"rows": kept, "rejected_too_long": rejected, "rows_in": kept + rejected}


def epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


@dataclass
class StepLayout:
    """How a global batch splits over workers and micro-batches."""

    global_batch_size: int
    micro_batch_size: int
    num_workers: int

    def per_step(self, n_rows: int) -> tuple[int, int, int]:
        """(samples per worker per step, micro-batches per step, steps per epoch)."""
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"sft.global_batch_size={self.global_batch_size} must be a multiple of "
                f"sft.num_workers={self.num_workers}"
            )
        per_worker = self.global_batch_size // self.num_workers
        if per_worker % self.micro_batch_size:
            raise ValueError(
                f"sft.global_batch_size / sft.num_workers = {per_worker} must be a multiple of "
                f"sft.micro_batch_size={self.micro_batch_size}"
            )
        return per_worker, per_worker // self.micro_batch_size, math.ceil(n_rows / self.global_batch_size)


class WorkerShard:
    """One rank's rows of each step, read on demand: the step's order slice, every `world`-th position."""

    def __init__(self, uri: str, layout: StepLayout, seed: int, rank: int, world: int):
        self.reader = RowReader(uri)
        self.n_rows = self.reader.num_rows
        if self.n_rows == 0:
            raise ValueError(f"no training rows in {uri}: the selection is empty")
        self.layout, self.seed, self.rank, self.world = layout, seed, rank, world
        _, self.micro_batches, self.steps_per_epoch = layout.per_step(self.n_rows)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation): one per epoch

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, self.n_rows))
        return self._order[1]

    def positions(self, global_step: int) -> list[list[int]]:
        """This rank's micro-batches (row positions) for a step; the last step of an epoch may leave some empty."""
        epoch, step = divmod(global_step, self.steps_per_epoch)
        size, micro = self.layout.global_batch_size, self.layout.micro_batch_size
        mine = self.order(epoch)[step * size : (step + 1) * size][self.rank :: self.world].tolist()
        return [mine[i * micro : (i + 1) * micro] for i in range(self.micro_batches)]

    def rows(self, global_step: int) -> list[list[dict]]:
        """The rows of this rank's micro-batches, one read per row group they touch."""
        micro = self.positions(global_step)
        flat = self.reader.take([p for m in micro for p in m])
        out, k = [], 0
        for m in micro:
            out.append(flat[k : k + len(m)])
            k += len(m)
        return out


def interleave_ranks(per_rank: list[list[str]]) -> list[str]:
    """Undo the `[rank::world]` split: rank r's i-th item was the batch's (i * world + r)-th."""
    world = len(per_rank)
    out = [None] * sum(len(p) for p in per_rank)
    for r, items in enumerate(per_rank):
        out[r::world] = items
    return out
