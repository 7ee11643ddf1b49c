"""Resume after a crash: nothing half-written is ever trusted as finished."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pytest

from r1v_ray.config import TinyModelConfig, load_config
from r1v_ray.data.io import ParquetSink, read_parquet, write_parquet
from r1v_ray.data.synthetic import corpus
from r1v_ray.metrics import StageMetrics, read_jsonl, truncate_after
from r1v_ray.stages.manifest import StageRun, run_stage


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed mid-append
    with pytest.warns(UserWarning, match="torn last line 3"):
        assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    # A resumed writer appends after the last whole line: the file stays readable.
    StageMetrics("s", str(path)).log(3, loss=0.5)
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2, 3]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(str(path))


def test_truncate_after_keeps_the_file_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    real, calls = json.dumps, []

    def dumps(obj, *a, **kw):  # the process dies while the kept records are being written
        calls.append(obj)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(obj, *a, **kw)

    monkeypatch.setattr(json, "dumps", dumps)
    with pytest.raises(KeyboardInterrupt):
        truncate_after(str(path), 3)
    monkeypatch.undo()
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2, 3, 4, 5]
    truncate_after(str(path), 3)
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2, 3]
    assert os.listdir(tmp_path) == ["m.jsonl"]  # no temporary file left


def test_write_json_atomic_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    from r1v_ray.atomic import write_json_atomic

    path = str(tmp_path / "done.json")
    write_json_atomic(path, {"v": 1})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_json_atomic(path, {"v": 2})
    monkeypatch.undo()
    assert json.load(open(path)) == {"v": 1} and os.listdir(tmp_path) == ["done.json"]


def _finished_distill(cfg, rows: int) -> None:
    """A complete distill stage: assessed/ in several part files, rejected_assess/, bounds.json."""
    train = str(os.path.join(cfg.run_dir, "train"))
    write_parquet(pa.table({"id": [str(i) for i in range(rows)]}), train)

    def body(run):
        with ParquetSink(run.path_for("assessed"), rows_per_file=2) as sink:
            for i in range(0, rows, 2):
                sink.write(pa.table({"id": [str(i), str(i + 1)]}))
        write_parquet(pa.table({"id": ["bad"]}), run.path_for("rejected_assess"))
        with open(run.path_for("bounds.json"), "w") as f:
            json.dump({"bounds": {}, "rows_out": rows, "rejected": 1}, f)
        return {"data": run.path_for("data"), "model": "m0"}, {}

    run_stage(cfg, "distill", body, {"train": train})


def test_redistill_never_trusts_a_half_copied_first_pass(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from r1v_ray.stages import redistill

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "judge.kind=offline"])
    _finished_distill(cfg, rows=10)
    seen = []

    def fake_distill(cfg, ds, model, out_dir, stage, workers=None):
        assert os.path.exists(os.path.join(out_dir, "bounds.json"))
        seen.append(read_parquet(os.path.join(out_dir, "assessed")).num_rows)
        write_parquet(pa.table({"id": ["0"]}), os.path.join(out_dir, "data"))
        return {"rows_out": 1}

    def fake_score(cfg, ds, out_dir, stage):
        write_parquet(pa.table({"id": ["0"]}), os.path.join(out_dir, "data"))
        return {"rows_out": 1}

    import pyarrow.fs as pafs

    real_copy, copied = pafs.copy_files, []

    def copy_dies(*args, **kwargs):  # killed after copying one part file
        if copied:
            raise KeyboardInterrupt
        copied.append(real_copy(*args, **kwargs))

    monkeypatch.setattr(redistill, "distill", fake_distill)
    monkeypatch.setattr(redistill, "score", fake_score)
    monkeypatch.setattr(redistill, "ray", SimpleNamespace(data=SimpleNamespace(read_parquet=lambda uri: uri)))
    hook = redistill.redistill_hook(cfg, StageRun(cfg, "sft"))
    monkeypatch.setattr(pafs, "copy_files", copy_dies)
    with pytest.raises(KeyboardInterrupt):
        hook(1, "m0")
    assert copied, "the copy did not start"
    monkeypatch.setattr(pafs, "copy_files", real_copy)
    data = hook(1, "m0")
    assert seen == [10], "the resumed re-distillation read a partial assessed/"
    assert json.load(open(os.path.join(os.path.dirname(os.path.dirname(data)), "done.json")))["data"] == data
    assert hook(1, "m0") == data and seen == [10]  # done.json: not redone


# --------------------------------------------------------------------------- checkpoints


def _truncate(path: str, keep: float = 0.5) -> None:
    with open(path, "rb+") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def test_a_checkpoint_with_truncated_weights_is_not_done(tiny_checkpoint, tmp_path):
    from r1v_ray.sft.training_folder import model_done as _model_done

    copy = str(tmp_path / "model")
    shutil.copytree(tiny_checkpoint, copy)
    assert _model_done(copy)
    _truncate(os.path.join(copy, "model.safetensors"))
    assert not _model_done(copy)  # config.json is there, the weights are not


def test_tiny_parts_killed_mid_write_are_rebuilt(tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    from r1v_ray.config import ModelConfig
    from r1v_ray.model.factory import load_llm, part_paths

    real, calls = mu.safe_save_file, []

    def save_dies(tensors, filename, *a, **kw):  # the third part's weights never land
        calls.append(filename)
        if len(calls) == 3:
            real(tensors, filename, *a, **kw)
            _truncate(filename)
            raise KeyboardInterrupt
        return real(tensors, filename, *a, **kw)

    cfg = ModelConfig(tiny=TinyModelConfig(text_layers=1, vision_layers=1))
    monkeypatch.setattr(mu, "safe_save_file", save_dies)
    with pytest.raises(KeyboardInterrupt):
        part_paths(cfg, str(tmp_path), corpus)
    monkeypatch.undo()
    paths = part_paths(cfg, str(tmp_path), corpus)
    load_llm(paths.reasoning_llm)  # whole weights, not the torn file


def test_assembled_checkpoint_killed_mid_save_is_redone(tiny_parts, tmp_path, monkeypatch):
    from transformers import InternVLProcessor

    from r1v_ray.config import ModelConfig
    from r1v_ray.model.assemble import load_checkpoint
    from r1v_ray.model.factory import assemble_initial

    cfg = ModelConfig(vision_path=tiny_parts.vision, llm_path=tiny_parts.reasoning_llm, max_image_tiles=1)
    cfg.source, cfg.substitute_llm_path = "pretrained", tiny_parts.substitute_llm
    out = str(tmp_path / "assembled")
    monkeypatch.setattr(InternVLProcessor, "save_pretrained", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # weights and config written, processor not
        assemble_initial(cfg, str(tmp_path), out, corpus=corpus)
    monkeypatch.undo()
    assert assemble_initial(cfg, str(tmp_path), out, corpus=corpus) == out
    load_checkpoint(out)  # processor and tokenizer are there


def test_forced_distill_keeps_the_model_it_chose(tiny_parts, tmp_path):
    from r1v_ray.model.assemble import checkpoint_complete
    from r1v_ray.stages.distill import generation_model

    parts = [f"model.{k}={v}" for k, v in (("vision_path", tiny_parts.vision), ("llm_path", tiny_parts.reasoning_llm))]
    cfg = load_config(
        None,
        [f"run_dir={tmp_path}", "model.source=pretrained", f"model.substitute_llm_path={tiny_parts.substitute_llm}"]
        + parts
        + ["model.max_image_tiles=1"],
    )
    run_stage(cfg, "distill", lambda run: ({"model": generation_model(cfg)}, {}), {})
    model = generation_model(cfg, reuse_finished=False)  # what a forced distill (no model stage yet) runs with
    seen = []
    run_stage(cfg, "distill", lambda run: (seen.append(checkpoint_complete(model)) or {"model": model}, {}), {}, True)
    assert seen == [True], "the forced re-run deleted the model it was about to distill with"
