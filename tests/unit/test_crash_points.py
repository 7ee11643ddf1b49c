"""Crash points: a stage killed at each of its write points, then resumed, ends with exactly the output and
rejected rows of an uninterrupted run; a judge outage fails a stage instead of completing it.

A write point is every Parquet part file, every atomically replaced file and every JSON file written in
place that a stage writes (the manifest aside): an uninterrupted run lists them, then for each a fresh run
is killed there (a part file or an in-place JSON file is left half written, a replaced file is never
renamed) and run again. The writes, and so the crash
points, are all the driver's; Ray Data's distribution of the batches is replaced by `LocalDataset`, which
runs the stages' real callables (judge pools, the self-distiller on the tiny model) in this process.
The same stages on a real Ray are tested in tests/integration/test_distill.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1v_ray.config import load_config
from r1v_ray.data.io import ParquetSink, read_parquet, write_parquet
from r1v_ray.data.schema import canonical_table
from r1v_ray.data.synthetic import make_row
from r1v_ray.stages.manifest import StageRun, run_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo", "tiny.yaml")


class Killed(BaseException):
    """The process dying at a write point (a BaseException: no `except Exception` may swallow it)."""


class LocalDataset:
    """The Ray Data calls the distill and score stages make (read_parquet, map_batches, iter_batches).

    Batches are handed out two rows at a time, and sinks cut a part file every two rows (`local_ray_data`),
    so each output spans several part files and a crash can land between them.
    """

    def __init__(self, uri: str, steps: tuple = ()):
        self.uri, self.steps = uri, steps

    def map_batches(self, fn, *, fn_constructor_args=(), fn_kwargs=None, batch_size=None, **_ignored):
        return LocalDataset(self.uri, (*self.steps, (fn, fn_constructor_args, fn_kwargs or {}, batch_size or 4096)))

    def iter_batches(self, batch_format="pyarrow", batch_size=256):
        table = read_parquet(self.uri)
        for fn, args, kwargs, size in self.steps:
            call = fn(*args) if isinstance(fn, type) else fn  # one "actor" per step
            parts = [call(table.slice(i, size), **kwargs) for i in range(0, table.num_rows, size)]
            table = pa.concat_tables(parts) if parts else table
        for i in range(0, table.num_rows, 2):
            yield table.slice(i, 2)


@pytest.fixture
def local_ray_data(monkeypatch):
    from r1v_ray.distill import dataflow
    from r1v_ray.stages import distill, score

    fake = SimpleNamespace(data=SimpleNamespace(read_parquet=LocalDataset, ActorPoolStrategy=lambda size: None))
    monkeypatch.setattr(dataflow, "ray", fake)
    monkeypatch.setattr(distill, "ray", fake)
    monkeypatch.setattr(score, "ray", fake)
    monkeypatch.setattr(dataflow, "ParquetSink", lambda *a, **kw: ParquetSink(*a, **{**kw, "rows_per_file": 2}))


class WritePoints:
    """Records writes under `root` (labelled by their path below the run folder) and kills at `kill`."""

    def __init__(self, monkeypatch, root: str):
        self.root, self.kill, self.seen = os.path.realpath(root), None, []
        real_write, real_replace = pq.write_table, os.replace

        def write_table(table, where, *args, **kwargs):
            if self._hit(where):  # a torn part file: half the rows, then death
                real_write(table.slice(0, table.num_rows // 2), where, *args, **kwargs)
                raise Killed(where)
            return real_write(table, where, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            if self._hit(dst):
                raise Killed(dst)  # the temporary file is written, never renamed
            return real_replace(src, dst, *args, **kwargs)

        real_dump = json.dump

        def dump(obj, fp, *args, **kwargs):  # a file written in place: torn in the middle
            if self._hit(getattr(fp, "name", "")):
                fp.write(json.dumps(obj)[:10])
                fp.flush()
                raise Killed(fp.name)
            return real_dump(obj, fp, *args, **kwargs)

        monkeypatch.setattr(pq, "write_table", write_table)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(json, "dump", dump)

    def _hit(self, path) -> bool:
        path = os.path.realpath(str(path))
        if not path.startswith(self.root + os.sep) or "manifest.json" in path:
            return False
        label = os.path.relpath(path, self.root).split(os.sep, 1)[1]  # without the run folder's own name
        self.seen.append(label)
        return label == self.kill


def _rows(uri: str) -> list[dict]:
    table = read_parquet(uri)
    rows = table.sort_by([("id", "ascending")]).to_pylist() if table.num_rows else []
    for row in rows:  # PIL's reason names an object's address ("<_io.BytesIO object at 0x7f...>"): not content
        if isinstance(row.get("reason"), str):
            row["reason"] = re.sub(r" at 0x[0-9a-f]+", "", row["reason"])
    return rows


def _killed_at_each_point(points: WritePoints, base, run, outputs) -> None:
    """`run(run_dir)` uninterrupted, then killed at each write point and re-run: `outputs(run_dir)` equal."""
    points.root, points.seen = os.path.realpath(base), []
    run(str(base / "clean"))
    expected, labels = outputs(str(base / "clean")), list(dict.fromkeys(points.seen))
    assert len(labels) >= 2, labels
    for k, label in enumerate(labels):
        run_dir = str(base / f"killed{k}")
        points.kill = label
        with pytest.raises(Killed):
            run(run_dir)
        points.kill = None
        run(run_dir)
        assert outputs(run_dir) == expected, f"killed at {label}"


def _cfg(run_dir: str, *overrides: str):
    return load_config(
        CONFIG,
        [f"run_dir={run_dir}", "rollout.backend=hf", "distill.max_tokens=8", "distill.batch_size=2", *overrides],
    )


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> str:
    rows = [make_row(0, "train", i) for i in range(5)]
    rows[0]["image"] = b"not an image"  # rejected while assessing
    path = str(tmp_path_factory.mktemp("in") / "train")
    write_parquet(canonical_table(rows), path)
    return path


def _stage_outputs(stage: str, rejected: tuple[str, ...]):
    def outputs(run_dir: str):
        d = os.path.join(run_dir, stage)
        assert StageRun(load_config(None, [f"run_dir={run_dir}"]), stage).complete
        return _rows(os.path.join(d, "data")), [_rows(os.path.join(d, r)) for r in rejected]

    return outputs


def test_distill_and_score_killed_at_each_write_point(
    local_ray_data, tmp_path, monkeypatch, tiny_checkpoint, train_data
):
    from r1v_ray.stages.distill import body as distill_stage
    from r1v_ray.stages.score import body as score_stage

    points = WritePoints(monkeypatch, str(tmp_path))

    def distill(run_dir: str) -> None:
        cfg = _cfg(run_dir)
        body = lambda run: distill_stage(cfg, run, tiny_checkpoint, train_data)  # noqa: E731
        run_stage(cfg, "distill", body, {"train": train_data, "model": tiny_checkpoint})

    _killed_at_each_point(points, tmp_path / "d", distill, _stage_outputs("distill", ("rejected_assess", "rejected")))
    distilled = _rows(str(tmp_path / "d" / "clean" / "distill" / "data"))
    assert (
        len(distilled) == 4
        and "distill/bounds.json" in points.seen
        and "distill/data/part-00001.parquet" in points.seen
    )

    data = str(tmp_path / "d" / "clean" / "distill" / "data")

    def score(run_dir: str) -> None:
        cfg = _cfg(run_dir)
        run_stage(cfg, "score", lambda run: score_stage(cfg, run, data), {"data": data})

    _killed_at_each_point(points, tmp_path / "s", score, _stage_outputs("score", ("rejected",)))


def test_convert_killed_at_each_write_point(tmp_path, monkeypatch):
    from r1v_ray.data.convert import convert_jsonl

    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(6):
        row = make_row(0, "train", i)
        (images / f"{i}.png").write_bytes(row["image"])
        lines.append(json.dumps({"id": row["id"], "image": f"{i}.png", "question": row["question"], "answer": "1"}))
    lines.insert(2, "{not json")
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")

    def convert(run_dir: str) -> None:
        out = os.path.join(run_dir, "convert")
        convert_jsonl(str(tmp_path / "in.jsonl"), str(images), os.path.join(out, "data"), os.path.join(out, "rejected"))

    def outputs(run_dir: str):
        return _rows(os.path.join(run_dir, "convert", "data")), _rows(os.path.join(run_dir, "convert", "rejected"))

    _killed_at_each_point(WritePoints(monkeypatch, str(tmp_path)), tmp_path / "c", convert, outputs)
    assert [len(part) for part in outputs(str(tmp_path / "c" / "clean"))] == [6, 1]


def _dead_judge(monkeypatch) -> list[str]:
    with socket.socket() as s:  # a port nobody listens on: every judge call is refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", "k")
    return ["judge.kind=openai", f"judge.base_url={url}", "judge.api_key_env=R1V_TEST_JUDGE_KEY", "judge.max_retries=0"]


def test_judge_outage_fails_the_stage_and_it_resumes(local_ray_data, tmp_path, monkeypatch, train_data):
    from r1v_ray.stages.score import body as score_stage

    run_dir, outage = str(tmp_path / "run"), _dead_judge(monkeypatch)

    def score(*overrides: str) -> dict:
        cfg = _cfg(run_dir, *overrides)
        return run_stage(cfg, "score", lambda run: score_stage(cfg, run, train_data), {"data": train_data})

    with pytest.raises(RuntimeError, match=r"judge failed on 4 of 5 rows \(80\.0%\).*max_failure_share=0\.05"):
        score(*outage)
    manifest = json.load(open(os.path.join(run_dir, "score", "manifest.json")))
    assert manifest["status"] == "failed" and "APIConnectionError" in manifest["error"]
    # Allowed to fail on every row, the stage still refuses to hand on an empty training set.
    with pytest.raises(ValueError, match=r"no rows were scored \(5 in, 5 rejected"):
        score(*outage, "judge.max_failure_share=1.0")
    done = score()  # the judge is back: the stage resumes and completes
    assert done["status"] == "complete" and done["attempts"] == 3
    assert done["metrics"]["rows_out"] == 4 and done["metrics"]["judge_failures"] == 0  # the bad image: rejected


def test_distill_first_pass_outage_is_redone_not_trusted(local_ray_data, tmp_path, monkeypatch, train_data):
    from r1v_ray.distill.dataflow import distill

    out = str(tmp_path / "d")
    with pytest.raises(RuntimeError, match=r"distill/assess: the judge failed on 4 of 5 rows"):
        distill(_cfg(str(tmp_path), *_dead_judge(monkeypatch)), LocalDataset(train_data), "unused", out)
    assert not os.path.exists(os.path.join(out, "bounds.json"))  # the next attempt redoes the first pass
    # (the fifth row, whose image does not decode, is rejected before the judge is asked: not an outage)


def test_max_failure_share_is_validated():
    from r1v_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"judge\.max_failure_share: expected a share in \[0, 1\], got 1\.5"):
        load_config(None, ["judge.max_failure_share=1.5"])
