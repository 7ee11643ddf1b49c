"""The canonical sample schema, defined once.

A canonical row is one image-text query with its ground truth. Stages add
columns (think, response, s_v, s_t, s_i, rep_penalty, rm_score, correct, ...);
those are allowed as extra columns and never required here.
"""

from __future__ import annotations

import pyarrow as pa

# Core columns every canonical dataset carries.
CANONICAL_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # encoded bytes (PNG/JPEG/...)
    pa.field("question", pa.string(), nullable=False),
    pa.field("choices", pa.list_(pa.string()), nullable=True),  # null for open questions
    pa.field("answer", pa.string(), nullable=False),  # option letter for multiple choice
    pa.field("source", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=True),  # per-category eval breakdown
    pa.field("rationale", pa.string(), nullable=True),  # reference reasoning when known
]
CANONICAL_SCHEMA = pa.schema(CANONICAL_FIELDS)
REQUIRED_COLUMNS = ("id", "image", "question", "answer", "source")

# Rows that could not be used, with the reason; `row` keeps the original as JSON
# (images as their byte length) so nothing is lost silently.
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=True),
        pa.field("image", pa.binary(), nullable=True),
    ]
)


def canonical_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) to a table with the canonical column types; extra columns are kept."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in CANONICAL_FIELDS}
    extra = sorted({k for r in rows for k in r} - set(columns))
    arrays = [pa.array(columns[f.name], type=f.type) for f in CANONICAL_FIELDS]
    fields = list(CANONICAL_FIELDS)
    for name in extra:
        arr = pa.array([r.get(name) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rejected_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)
