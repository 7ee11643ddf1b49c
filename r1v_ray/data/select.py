"""Training-set selections as streaming scans: D_rm(tau), D_rm(tau) ∪ E, subsets by score or source.

A selection is a list of disjoint pyarrow filter expressions over one dataset, written part after part:
the scan pushes each filter down to the Parquet reader and the output is written batch by batch, so
no process holds the dataset. Only the ids of an error set are held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from r1v_ray.data.io import ParquetSink, dataset_schema, scan_batches

# Datasets read by position (SFT workers, the GRPO sampler) are written with small row groups: a
# random row then costs one small read, not a whole file.
RANDOM_ACCESS_ROW_GROUP = 8


@dataclass
class Selection:
    """Rows of `uri` that match any part, in part order (parts are disjoint), and what they are."""

    uri: str
    parts: list[pads.Expression | None]
    description: str

    def batches(self, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[pa.RecordBatch]:
        for where in self.parts:
            yield from scan_batches(self.uri, where, columns, batch_size)

    def count(self) -> int:
        return sum(b.num_rows for b in self.batches(columns=["id"], batch_size=4096))

    def write(self, out_uri: str, row_group_rows: int | None = RANDOM_ACCESS_ROW_GROUP) -> int:
        """Stream the selected rows to a dataset at out_uri (empty, with the schema, when none match)."""
        with ParquetSink(out_uri, schema=dataset_schema(self.uri), row_group_rows=row_group_rows) as sink:
            for batch in self.batches():
                sink.write(pa.Table.from_batches([batch]))
        return sink.rows_written


def _at_least(column: str, value: float) -> pads.Expression:
    """column >= value, with a missing score counting as below it (not as unknown)."""
    return pc.coalesce(pc.field(column) >= value, False)


def all_rows(uri: str) -> Selection:
    return Selection(uri, [None], "all rows")


def subset(
    uri: str, score_column: str | None = None, min_score: float | None = None, sources: list[str] | None = None
) -> Selection:
    """Rows with score_column >= min_score and/or source in sources."""
    where, notes = None, []
    if score_column is not None and min_score is not None:
        if score_column not in dataset_schema(uri).names:
            raise ValueError(
                f"subset by '{score_column}' >= {min_score}, but {uri} has no '{score_column}' column; "
                "run jobs/score.py first or select by sources"
            )
        where = _at_least(score_column, min_score)
        notes.append(f"{score_column} >= {min_score}")
    if sources:
        by_source = pc.field("source").isin(pa.array(sources, pa.string()))
        where = by_source if where is None else where & by_source
        notes.append(f"source in {sources}")
    return Selection(uri, [where], " and ".join(notes) or "all rows")


def d_rm(uri: str, column: str, tau: float) -> Selection:
    """D_rm(tau) = {x in D | RM(x) >= tau}; without RM scores (no score stage yet) it is all of D, said so."""
    if column not in dataset_schema(uri).names:
        return Selection(uri, [None], f"all rows (no '{column}' column: run jobs/score.py for the RM filter)")
    return subset(uri, column, tau)


def with_errors(selection: Selection, error_ids: list[str]) -> Selection:
    """selection ∪ E: the selected rows, then the rows of E it lacks (E's ids are rows of the same data)."""
    in_errors = pc.field("id").isin(pa.array(error_ids, pa.string()))
    chosen = [p for p in selection.parts if p is not None]
    if len(chosen) < len(selection.parts):  # the selection is all rows already
        return selection
    extra = in_errors
    for part in chosen:
        extra = extra & ~pc.coalesce(part, False)
    return Selection(selection.uri, [*selection.parts, extra], f"({selection.description}) ∪ E ({len(error_ids)} ids)")
