"""Read and write canonical datasets on local paths and pyarrow/fsspec URIs.

A dataset is a folder of Parquet files (`part-00000.parquet`, ...), the same
layout Ray Data's `write_parquet` produces, so stages can hand datasets to
`ray.data.read_parquet` unchanged.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path, a pyarrow URI (s3://, gs://, hdfs://) or any fsspec URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve_fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def remove(uri: str) -> None:
    """Delete a dataset folder (or file) if it exists."""
    from r1v_ray import store  # the store builds on this module

    store.remove(uri)


def makedirs(uri: str) -> None:
    fs, path = resolve_fs(uri)
    fs.create_dir(path, recursive=True)


def write_text(uri: str, text: str) -> None:
    fs, path = resolve_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(uri: str) -> str:
    fs, path = resolve_fs(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns worth min/max statistics: not binary ones. An image column's statistics are two whole
    images per row group, written into the footer that every reader parses."""
    return [f.name for f in schema if not (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))]


class ParquetSink:
    """Streaming dataset writer: buffers at most `rows_per_file` rows or `max_bytes`, then writes a part file.

    `row_group_rows` makes row groups that small: a dataset read by position (`RowReader`) then costs one
    small row group per row asked for instead of a whole file.
    """

    def __init__(
        self,
        uri: str,
        schema: pa.Schema | None = None,
        rows_per_file: int = 4096,
        max_bytes: int = 64 << 20,
        row_group_rows: int | None = None,
    ):
        self.fs, self.path = resolve_fs(uri)
        self.fs.create_dir(self.path, recursive=True)
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.row_group_rows = row_group_rows
        self.max_bytes = max_bytes
        self._bytes = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._part = 0
        self.rows_written = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        self._bytes += table.nbytes
        if self._buffered >= self.rows_per_file or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer, promote_options="default")
        pq.write_table(
            table,
            f"{self.path}/part-{self._part:05d}.parquet",
            filesystem=self.fs,
            row_group_size=self.row_group_rows,
            write_statistics=_statistics_columns(table.schema),
        )
        self.rows_written += table.num_rows
        self._part += 1
        self._buffer, self._buffered, self._bytes = [], 0, 0

    def close(self) -> int:
        self.flush()
        if self._part == 0 and self.schema is not None:  # an empty dataset still has a schema
            pq.write_table(self.schema.empty_table(), f"{self.path}/part-00000.parquet", filesystem=self.fs)
        return self.rows_written

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_parquet(table: pa.Table, uri: str, rows_per_file: int = 4096) -> int:
    with ParquetSink(uri, rows_per_file=rows_per_file) as sink:
        sink.write(table)
    return sink.rows_written


def _dataset(uri: str) -> pads.Dataset:
    fs, path = resolve_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no dataset at {uri}")
    return pads.dataset(path, format="parquet", filesystem=fs)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    return _dataset(uri).to_table(columns=columns)


def iter_batches(uri: str, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a dataset batch by batch without loading it whole."""
    yield from _dataset(uri).to_batches(batch_size=batch_size, columns=columns)


def count_rows(uri: str) -> int:
    return _dataset(uri).count_rows()


def iter_rows(uri: str, batch_size: int = 1024, columns: list[str] | None = None) -> Iterable[dict]:
    for batch in iter_batches(uri, batch_size, columns):
        yield from batch.to_pylist()


def scan_batches(
    uri: str, where: pads.Expression | None = None, columns: list[str] | None = None, batch_size: int = 256
) -> Iterator[pa.RecordBatch]:
    """Stream the rows matching `where`, in dataset order, one row group in memory at a time.

    The filter is evaluated on the row group's non-binary columns first; the rest (images) is read only
    for row groups with a match. (pyarrow's dataset scanner reads ahead on its own threads, and a slow
    consumer lets hundreds of MB of decoded images pile up.)
    """
    dataset = _dataset(uri)
    keys = [f.name for f in dataset.schema if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)]
    for path in dataset.files:
        parquet = pq.ParquetFile(dataset.filesystem.open_input_file(path))
        for group in range(parquet.num_row_groups):
            if where is None:
                table = parquet.read_row_group(group, columns=columns)
            else:
                key_table = parquet.read_row_group(group, columns=keys)
                key_table = key_table.append_column("__position", pa.array(range(key_table.num_rows), pa.int64()))
                matched = key_table.filter(where).column("__position")
                if len(matched) == 0:
                    continue
                table = parquet.read_row_group(group, columns=columns).take(matched)
            yield from table.to_batches(max_chunksize=batch_size)


def dataset_schema(uri: str) -> pa.Schema:
    return _dataset(uri).schema


class RowReader:
    """Rows of a Parquet dataset by position (the order `read_parquet` gives), without loading the dataset.

    Up front only the files' footers are read, for their row-group sizes (a few ints per row group).
    `take(positions)` reads the row groups that hold those positions, one at a time, and keeps just the rows
    asked for (write such datasets with `ParquetSink(row_group_rows=...)`). The row groups read last are
    kept, up to `cache_bytes`: a training run reads its rows again every epoch, and on an object store each
    row group is a request. Memory is bounded by the rows asked for plus the cache.
    """

    def __init__(self, uri: str, columns: list[str] | None = None, cache_bytes: int = 64 << 20):
        self.uri, self.columns, self.cache_bytes = uri, columns, cache_bytes
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()  # row group index -> its rows, least recent first
        self._cached_bytes = 0
        dataset = _dataset(uri)
        self._fs = dataset.filesystem
        self._files = list(dataset.files)
        self._groups: list[tuple[int, int]] = []  # (file index, row group index), in dataset order
        self._starts: list[int] = []  # first position of each row group
        self.num_rows = 0
        for f, fragment in enumerate(dataset.get_fragments()):
            for g, group in enumerate(fragment.metadata.to_dict()["row_groups"]):
                self._groups.append((f, g))
                self._starts.append(self.num_rows)
                self.num_rows += group["num_rows"]
        self._open: tuple[int, pq.ParquetFile] | None = None

    def __len__(self) -> int:
        return self.num_rows

    def _file(self, f: int) -> pq.ParquetFile:
        if self._open is None or self._open[0] != f:  # positions are read grouped by file: one open each
            self._open = (f, pq.ParquetFile(self._fs.open_input_file(self._files[f])))
        return self._open[1]

    def take(self, positions: Iterable[int]) -> list[dict]:
        """The rows at `positions`, in that order (a position may repeat)."""
        positions = list(positions)
        by_group: dict[int, set[int]] = {}
        for p in positions:
            if not 0 <= p < self.num_rows:
                raise IndexError(f"row {p} of {self.uri}: the dataset has {self.num_rows} rows")
            by_group.setdefault(bisect.bisect_right(self._starts, p) - 1, set()).add(p)
        rows: dict[int, dict] = {}
        for g in sorted(by_group):
            table = self._row_group(g)
            offsets = sorted(by_group[g])
            rows.update(zip(offsets, table.take([p - self._starts[g] for p in offsets]).to_pylist()))
        return [rows[p] for p in positions]

    def _row_group(self, g: int) -> pa.Table:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        f, group = self._groups[g]
        table = self._file(f).read_row_group(group, columns=self.columns)
        self._cache[g] = table
        self._cached_bytes += table.nbytes
        while self._cached_bytes > self.cache_bytes and self._cache:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return table
