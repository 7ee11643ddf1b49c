"""Converters into the canonical schema: JSONL + image folder, and HF datasets saved to disk.

Both stream: rows are validated and written batch by batch, and every input
row ends in `out_uri` or in `rejected_uri` with its reason.
"""

from __future__ import annotations

import ast
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from r1v_ray.data.io import ParquetSink, remove, resolve_fs
from r1v_ray.data.schema import CANONICAL_SCHEMA, REJECTED_SCHEMA, canonical_table, rejected_table
from r1v_ray.data.validate import RowError, RowValidator

CANONICAL_KEYS = ("id", "image", "question", "choices", "answer", "source", "category", "rationale")


@dataclass
class ConversionReport:
    input_rows: int = 0
    output_rows: int = 0
    rejected_rows: int = 0
    reasons: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"rows in: {self.input_rows}  written: {self.output_rows}  rejected: {self.rejected_rows}"]
        lines += [f"  {n:6d}  {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def write_validated(
    rows: Iterable[dict | RowError],
    out_uri: str,
    rejected_uri: str,
    stage: str,
    max_image_bytes: int = 20 * 1024 * 1024,
    batch_size: int = 256,
) -> ConversionReport:
    """Validate a stream of rows (or pre-failed rows given as (raw, RowError)) into output and rejected sets."""
    validator = RowValidator(stage=stage, max_image_bytes=max_image_bytes)
    report = ConversionReport()
    good: list[dict] = []
    bad: list[dict] = []
    # Written beside the targets, then swapped in: the targets end up holding exactly this conversion
    # (no part files left from an earlier, larger one), and a conversion that dies leaves them as they were.
    tmp_out, tmp_rej = _staging(out_uri), _staging(rejected_uri)
    with ParquetSink(tmp_out, schema=CANONICAL_SCHEMA) as out, ParquetSink(tmp_rej, schema=REJECTED_SCHEMA) as rej:
        for item in rows:
            report.input_rows += 1
            raw, error = item if isinstance(item, tuple) else (item, None)
            if error is not None:
                bad.append(validator.reject(raw, str(error)))
            else:
                ok, ko = validator.split([raw])
                good += ok
                bad += ko
            if len(good) >= batch_size:
                out.write(canonical_table(good))
                good = []
            if len(bad) >= batch_size:
                rej.write(rejected_table(bad))
                bad = []
        if good:
            out.write(canonical_table(good))
        if bad:
            rej.write(rejected_table(bad))
    _replace(tmp_out, out_uri)
    _replace(tmp_rej, rejected_uri)
    report.output_rows, report.rejected_rows = out.rows_written, rej.rows_written
    report.reasons = {
        k.removeprefix("rejected: "): v for k, v in validator.counts.items() if k.startswith("rejected: ")
    }
    return report


def _staging(uri: str) -> str:
    """A fresh sibling of `uri` to write into (a leftover from a conversion that died is cleared)."""
    staging = uri.rstrip("/") + ".converting"
    remove(staging)
    return staging


def _replace(staging: str, uri: str) -> None:
    fs, path = resolve_fs(uri)
    remove(uri)
    fs.move(resolve_fs(staging)[1], path)


# --------------------------------------------------------------------------- JSONL


def _read_image_file(root: str, rel: str) -> bytes:
    path = os.path.normpath(os.path.join(root, rel))
    if not path.startswith(os.path.normpath(root) + os.sep) and path != os.path.normpath(root):
        raise RowError(f"image path {rel!r} escapes the image folder")
    if not os.path.isfile(path):
        raise RowError(f"image file not found: {rel}")
    with open(path, "rb") as f:
        return f.read()


def iter_jsonl(jsonl_path: str, image_root: str, source: str | None = None) -> Iterator[dict | tuple]:
    """Rows of a JSONL file whose `image` (or `image_path`) names a file under `image_root`."""
    with open(jsonl_path, "rb") as f:  # bytes: one undecodable line is rejected, not the whole file
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise RowError("expected a JSON object")
            except (ValueError, RowError, RecursionError) as exc:  # bad UTF-8 / JSON, or nesting too deep
                kind = "invalid UTF-8" if isinstance(exc, UnicodeDecodeError) else "invalid JSON"
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                text = raw[:500].decode("utf-8", errors="replace")
                yield ({"id": None, "line": lineno, "text": text}, RowError(f"{kind}: line {lineno}: {reason}"))
                continue
            row = {k: record.get(k) for k in CANONICAL_KEYS}
            row["id"] = record.get("id", f"{source or 'jsonl'}-{lineno}")
            row["source"] = record.get("source") or source or os.path.basename(jsonl_path)
            ref = record.get("image", record.get("image_path"))
            if ref is None:
                yield (row, RowError("missing image"))
                continue
            try:
                row["image"] = _read_image_file(image_root, ref) if isinstance(ref, str) else ref
            except RowError as exc:
                yield (row, exc)
                continue
            yield row


def convert_jsonl(
    jsonl_path: str,
    image_root: str,
    out_uri: str,
    rejected_uri: str,
    source: str | None = None,
    max_image_bytes: int = 20 * 1024 * 1024,
) -> ConversionReport:
    return write_validated(
        iter_jsonl(jsonl_path, image_root, source), out_uri, rejected_uri, "convert_jsonl", max_image_bytes
    )


# --------------------------------------------------------------------------- HF datasets


IMAGE_COLUMNS = ("image", "decoded_image", "image_1")
CHOICE_COLUMNS = ("options", "choices")
CATEGORY_COLUMNS = ("category", "subfield", "subject", "question_type")


def _image_bytes(value) -> bytes | None:
    """Encoded bytes from what a `datasets` Image column holds: PIL image, {'bytes','path'} or a path."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path") and os.path.isfile(value["path"]):
            with open(value["path"], "rb") as f:
                return f.read()
        return None
    if hasattr(value, "save"):  # PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise RowError(f"wrong type for image: {type(value).__name__}")


def _parse_options(value):
    """MMMU stores options as the repr of a list; parse it without eval."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise RowError(f"unparsable options: {value[:80]!r}") from None
    return value


def _first(record: dict, names: tuple[str, ...]):
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    return None


def iter_hf_dataset(path: str, source: str | None = None, split: str | None = None) -> Iterator[dict | tuple]:
    """Rows of a `datasets` dataset saved with `save_to_disk` (MMMU / MathVista layouts)."""
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise ValueError(f"{path} holds splits {list(ds)}; pass split=")
            split = next(iter(ds))
        ds = ds[split]
    # Keep Image columns undecoded: bytes are what we store, and a corrupt file must not crash iteration.
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    name = source or os.path.basename(os.path.normpath(path))
    for index, record in enumerate(ds):
        row = {
            "id": _first(record, ("id", "pid", "question_id")) or f"{name}-{index}",
            "question": record.get("question"),
            "answer": record.get("answer"),
            "source": record.get("source") or name,
            "category": _first(record, CATEGORY_COLUMNS),
        }
        try:
            row["choices"] = _parse_options(_first(record, CHOICE_COLUMNS))
            row["image"] = _image_bytes(_first(record, IMAGE_COLUMNS))
        except RowError as exc:
            yield (row, exc)
            continue
        yield row


def convert_hf_dataset(
    path: str,
    out_uri: str,
    rejected_uri: str,
    source: str | None = None,
    split: str | None = None,
    max_image_bytes: int = 20 * 1024 * 1024,
) -> ConversionReport:
    return write_validated(iter_hf_dataset(path, source, split), out_uri, rejected_uri, "convert_hf", max_image_bytes)


def main(argv: list[str] | None = None) -> int:
    """python -m r1v_ray.data.convert {jsonl,hf} ... — converts and prints the counts."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m r1v_ray.data.convert", description=main.__doc__)
    sub = ap.add_subparsers(dest="kind", required=True)
    j = sub.add_parser("jsonl", help="JSONL + image folder")
    j.add_argument("jsonl")
    j.add_argument("image_root")
    h = sub.add_parser("hf", help="a Hugging Face dataset saved with save_to_disk (MMMU / MathVista layout)")
    h.add_argument("path")
    h.add_argument("--split")
    for p in (j, h):
        p.add_argument("--out", required=True, help="output dataset (path or URI)")
        p.add_argument("--rejected", required=True, help="rejected rows dataset (path or URI)")
        p.add_argument("--source")
    args = ap.parse_args(argv)
    if args.kind == "jsonl":
        report = convert_jsonl(args.jsonl, args.image_root, args.out, args.rejected, args.source)
    else:
        report = convert_hf_dataset(args.path, args.out, args.rejected, args.source, args.split)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
