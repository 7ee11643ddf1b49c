"""Fuzz: the JSONL converter accounts for every line of any file (output or rejected, with a reason), and the
HF converter's options parser takes any string."""

from __future__ import annotations

import io
import json
import os
import tempfile

from fuzz_settings import examples
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from r1v_ray.data.convert import _parse_options, convert_jsonl
from r1v_ray.data.io import read_parquet
from r1v_ray.data.validate import RowError


def _png(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {"a.png": _png("RGB"), "la.png": _png("LA"), "bad.png": b"\x89PNG\r\n\x1a\n broken"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
refs = st.sampled_from([*IMAGES, "missing.png", "../../etc/passwd", "", "a.png\x00x", "/abs.png"]) | json_values
records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["1", "2", "1 "]) | json_values,
        "image": refs,
        "image_path": refs,
        "question": st.text(max_size=12) | json_values,
        "answer": st.sampled_from(["A", "b", "42", "(C)", ""]) | json_values,
        "choices": st.lists(st.text(max_size=4), max_size=4) | json_values,
        "source": json_values,
        "category": json_values,
        "rationale": json_values,
    },
)
lines = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),
    records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.sampled_from([b"[" * 3000, b'{"id": "9", "answer": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"{", b"   "]),
)


@examples(80)
@given(st.lists(lines, max_size=10))
def test_every_line_ends_in_the_output_or_rejected(chunks):
    data = b"\n".join(chunks) + b"\n"
    expected = sum(1 for line in io.BytesIO(data) if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in IMAGES.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
        with open(os.path.join(tmp, "d.jsonl"), "wb") as f:
            f.write(data)
        out, rej = os.path.join(tmp, "out"), os.path.join(tmp, "rej")
        report = convert_jsonl(os.path.join(tmp, "d.jsonl"), tmp, out, rej, source="fuzz")
        assert report.input_rows == expected == report.output_rows + report.rejected_rows
        written, rejected = read_parquet(out), read_parquet(rej).to_pylist()
        assert written.num_rows == report.output_rows and len(rejected) == report.rejected_rows
        ids = written.column("id").to_pylist()
        assert len(set(ids)) == len(ids)
        assert all(r["reason"] for r in rejected)


@examples(300)
@given(st.text(max_size=40) | st.lists(st.sampled_from(["[", "]", "(", ")", "'a'", ",", "1", "{", "}"])).map("".join))
def test_options_parser_takes_any_string(text):
    try:
        _parse_options(text)
    except RowError as exc:
        assert str(exc).startswith("unparsable options")
