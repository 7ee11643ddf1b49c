"""SFT datasets: subsets by score or source, D_rm(tau) ∪ E, and the context-length filter into `rejected`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from r1v_ray.data.io import ParquetSink
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.engines.rollout.types import PromptBuilder
from r1v_ray.sft.samples import sample_tokens


def select_subset(
    table: pa.Table, score_column: str | None = None, min_score: float | None = None, sources: list[str] | None = None
) -> tuple[pa.Table, str]:
    """Rows with score_column >= min_score and/or source in sources; (subset, description)."""
    notes = []
    if score_column is not None and min_score is not None:
        if score_column not in table.column_names:
            raise ValueError(
                f"subset by '{score_column}' >= {min_score}, but the data has no '{score_column}' column; "
                "run jobs/score.py first or select by sources"
            )
        table = table.filter(pc.greater_equal(table[score_column], min_score))
        notes.append(f"{score_column} >= {min_score}")
    if sources:
        table = table.filter(pc.is_in(table["source"], value_set=pa.array(sources)))
        notes.append(f"source in {sources}")
    return table, " and ".join(notes) or "all rows"


def union_by_id(first: pa.Table, second: pa.Table) -> pa.Table:
    """first ∪ second, a row per id (first wins); columns as in `first`."""
    extra = second.filter(pc.invert(pc.is_in(second["id"], value_set=first["id"].combine_chunks())))
    return pa.concat_tables([first, extra.select(first.column_names).cast(first.schema)])


def filter_by_length(table: pa.Table, processor, max_length: int, out_uri: str, rejected_uri: str, stage: str) -> dict:
    """Write rows that fit `max_length` to out_uri and the others to rejected_uri with the reason."""
    builder = PromptBuilder(processor, max_length)
    kept = rejected = 0
    with ParquetSink(out_uri) as out, ParquetSink(rejected_uri, schema=REJECTED_SCHEMA) as rej:
        for batch in table.to_batches(max_chunksize=512):
            rows = batch.to_pylist()
            lengths = [sample_tokens(r, processor, builder) for r in rows]
            ok = [n <= max_length for n in lengths]
            out.write(pa.Table.from_batches([batch]).filter(pa.array(ok)))
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
    return {"rows": kept, "rejected_too_long": rejected}


def d_rm(table: pa.Table, column: str, tau: float) -> tuple[pa.Table, str]:
    """D_rm(tau) = {x in D | RM(x) >= tau}; without RM scores (no score stage yet) it is all of D, said so."""
    if column not in table.column_names:
        return table, f"all rows (no '{column}' column: run jobs/score.py for the RM filter)"
    return select_subset(table, column, tau)
