"""Canonical data: schema, readers/writers, converters, validation, the synthetic task."""

from r1v_ray.data.io import ParquetSink, count_rows, iter_batches, iter_rows, read_parquet, write_parquet
from r1v_ray.data.schema import CANONICAL_SCHEMA, REJECTED_SCHEMA, canonical_table, rejected_table

__all__ = [
    "CANONICAL_SCHEMA",
    "REJECTED_SCHEMA",
    "ParquetSink",
    "canonical_table",
    "count_rows",
    "iter_batches",
    "iter_rows",
    "read_parquet",
    "rejected_table",
    "write_parquet",
]
