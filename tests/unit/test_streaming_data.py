"""Streaming data paths: rows by position, selections as filtered scans, each SFT rank's rows of a step."""

import os

import pyarrow as pa
import pytest

from r1v_ray.data import io
from r1v_ray.data.io import RowReader, read_parquet, write_parquet
from r1v_ray.data.select import d_rm, subset, with_errors
from r1v_ray.sft.data import StepLayout, WorkerShard, epoch_order, interleave_ranks


def _table(n: int) -> pa.Table:
    scores = [None if i % 7 == 3 else i % 6 for i in range(n)]
    return pa.table({"id": [f"r{i}" for i in range(n)], "rm_score": scores, "source": ["a", "b", "c"] * (n // 3)})


def _counted_row_group_reads(monkeypatch) -> list[int]:
    """The row groups pyarrow reads from now on, in order."""
    reads: list[int] = []
    original = io.pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        io.pq.ParquetFile, "read_row_group", lambda self, i, **kw: reads.append(i) or original(self, i, **kw)
    )
    return reads


def test_row_reader_returns_rows_in_the_asked_order_reading_only_their_row_groups(tmp_path, monkeypatch):
    uri = str(tmp_path / "d")
    write_parquet(_table(60), uri, rows_per_file=25)  # 3 files, 1 row group each
    with io.ParquetSink(str(tmp_path / "small"), row_group_rows=4, rows_per_file=25) as sink:
        sink.write(_table(60))
    whole = read_parquet(uri).to_pylist()
    for path in (uri, str(tmp_path / "small")):
        reader = RowReader(path)
        wanted = [59, 0, 24, 25, 25, 7]
        assert len(reader) == 60 and reader.take(wanted) == [whole[i] for i in wanted]
    reads = _counted_row_group_reads(monkeypatch)
    RowReader(str(tmp_path / "small")).take([5, 6, 30])
    assert len(reads) == 2  # two row groups of 4 rows, not the 60-row dataset
    with pytest.raises(IndexError, match="has 60 rows"):
        reader.take([60])


def test_row_reader_keeps_the_row_groups_it_read_last_within_its_cache_bytes(tmp_path, monkeypatch):
    """An epoch's second pass over the same rows reads nothing again (on an object store, a request per row
    group); with no room in the cache every pass reads them again."""
    with io.ParquetSink(str(tmp_path / "small"), row_group_rows=4, rows_per_file=25) as sink:
        sink.write(_table(60))
    reads = _counted_row_group_reads(monkeypatch)
    cached, uncached = RowReader(str(tmp_path / "small")), RowReader(str(tmp_path / "small"), cache_bytes=0)
    for reader in (cached, uncached):
        first = reader.take([5, 6, 30, 59])
        reads.clear()
        assert reader.take([59, 30, 6, 5]) == first[::-1]
        assert len(reads) == (0 if reader is cached else 3)
    assert 0 < cached._cached_bytes <= cached.cache_bytes and uncached._cached_bytes == 0


def test_selections_match_the_in_memory_filters_and_stream_their_output(tmp_path):
    uri = str(tmp_path / "d")
    table = _table(90)
    write_parquet(table, uri, rows_per_file=20)
    rows = table.to_pylist()

    def ids(selection):
        out = str(tmp_path / f"out{len(os.listdir(tmp_path))}")
        assert selection.write(out) == selection.count()
        return read_parquet(out).column("id").to_pylist()

    d = d_rm(uri, "rm_score", 4)
    assert ids(d) == [r["id"] for r in rows if r["rm_score"] is not None and r["rm_score"] >= 4]
    errors = ["r89", "r5", "r10", "r3"]  # r3, r10: no score; r5, r89: in D_rm already
    union = ids(with_errors(d, errors))
    assert union == ids(d) + ["r3", "r10"]  # D_rm first, then E's rows it lacks, in data order: a row per id
    assert ids(subset(uri, "rm_score", 5, ["a"])) == [
        r["id"] for r in rows if r["rm_score"] == 5 and r["source"] == "a"
    ]
    assert d_rm(uri, "no_such", 4).description.startswith("all rows")
    with pytest.raises(ValueError, match="has no 'no_such' column"):
        subset(uri, "no_such", 1)
    empty = str(tmp_path / "empty")
    assert d_rm(uri, "rm_score", 99).write(empty) == 0
    assert read_parquet(empty).schema.names == table.schema.names  # an empty selection still has a schema


def test_worker_shards_cover_each_step_exactly_once_in_the_global_order(tmp_path):
    uri = str(tmp_path / "d")
    with io.ParquetSink(uri, row_group_rows=8) as sink:
        sink.write(_table(45))
    layout = StepLayout(global_batch_size=8, micro_batch_size=2, num_workers=2)
    shards = [WorkerShard(uri, layout, seed=3, rank=r, world=2) for r in range(2)]
    ids = read_parquet(uri).column("id").to_pylist()
    assert shards[0].steps_per_epoch == 6 and shards[0].micro_batches == 2
    for global_step in range(12):  # two epochs; the last step of each is short
        epoch, step = divmod(global_step, 6)
        per_rank = [[r["id"] for m in shard.rows(global_step) for r in m] for shard in shards]
        expected = [ids[i] for i in epoch_order(3, epoch, 45)[step * 8 : (step + 1) * 8]]
        assert interleave_ranks(per_rank) == expected


def test_an_empty_training_set_fails_before_training(tmp_path):
    uri = str(tmp_path / "d")
    with io.ParquetSink(uri, schema=_table(3).schema) as sink:
        pass
    assert sink.rows_written == 0
    with pytest.raises(ValueError, match="selection is empty"):
        WorkerShard(uri, StepLayout(8, 2, 2), seed=0, rank=0, world=2)
