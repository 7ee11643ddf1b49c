"""Converters: a re-conversion replaces the output exactly, and one bad line is rejected, not the whole file."""

import io
import json

from PIL import Image

from r1v_ray.data.convert import convert_jsonl
from r1v_ray.data.io import read_parquet


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def _write_jsonl(path, n: int, prefix: str) -> None:
    """n rows: even ones good, odd ones without an image (rejected)."""
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"{prefix}{i}", "question": "How many?", "answer": str(i)}
            if i % 2 == 0:
                row["image"] = "a.png"
            f.write(json.dumps(row) + "\n")


def test_converting_again_into_the_same_folder_leaves_exactly_the_new_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    out, rej = str(tmp_path / "out"), str(tmp_path / "rej")
    _write_jsonl(tmp_path / "big.jsonl", 8400, "big")  # 4,200 good and 4,200 rejected: two part files each
    first = convert_jsonl(str(tmp_path / "big.jsonl"), str(tmp_path), out, rej)
    assert (first.output_rows, first.rejected_rows) == (4200, 4200)
    _write_jsonl(tmp_path / "small.jsonl", 10, "small")
    second = convert_jsonl(str(tmp_path / "small.jsonl"), str(tmp_path), out, rej)
    assert (second.output_rows, second.rejected_rows) == (5, 5)
    assert read_parquet(out).column("id").to_pylist() == [
        f"small{i}" for i in range(0, 10, 2)
    ]  # 104 stale rows were kept
    assert sorted(read_parquet(rej).column("id").to_pylist()) == sorted(f"small{i}" for i in range(1, 10, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "big.jsonl", "out", "rej", "small.jsonl"]


def test_one_undecodable_or_too_deep_line_is_rejected_with_its_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    good = [json.dumps({"id": str(i), "image": "a.png", "question": "Q?", "answer": "1"}).encode() for i in range(3)]
    lines = [
        good[0],
        b'{"id": "x", "question": "caf\xe9", "answer": "1"}',  # Latin-1, not UTF-8
        good[1],
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
        b'{"id": "y", "answer": ' + b"9" * 5000 + b"}",  # more digits than int() takes
        good[2],
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = convert_jsonl(str(tmp_path / "d.jsonl"), str(tmp_path), str(tmp_path / "out"), str(tmp_path / "rej"))
    assert read_parquet(str(tmp_path / "out")).column("id").to_pylist() == ["0", "1", "2"]
    reasons = sorted(r["reason"] for r in read_parquet(str(tmp_path / "rej")).to_pylist())
    assert len(reasons) == 3 and report.input_rows == 6
    assert reasons[0].startswith("invalid JSON: line 4: nested too deeply")
    assert reasons[1].startswith("invalid JSON: line 5:")
    assert reasons[2].startswith("invalid UTF-8: line 2:")
    assert report.reasons == {"invalid JSON": 2, "invalid UTF-8": 1}
