"""Row validation: every row ends either canonical or in `rejected` with its reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from r1v_ray.data.images import ImageError, decode_rgb
from r1v_ray.rewards import OPTION_LETTERS, normalize_text


class RowError(ValueError):
    """Why a row cannot be used."""


def _text(row: dict, key: str, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"wrong type for {key}: {type(value).__name__} (expected a string)")
    return str(value).strip()


def check_image(data, max_bytes: int) -> bytes:
    if data is None:
        raise RowError("missing image")
    if not isinstance(data, (bytes, bytearray)):
        raise RowError(f"wrong type for image: {type(data).__name__} (expected encoded bytes)")
    if len(data) == 0:
        raise RowError("empty image")
    if len(data) > max_bytes:
        raise RowError(f"image too large: {len(data)} bytes > {max_bytes}")
    try:
        decode_rgb(bytes(data))  # the pixels every stage will see: decodable, within the pixel cap
    except ImageError as exc:
        raise RowError(str(exc)) from None
    return bytes(data)


def _choices(value) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise RowError(f"wrong type for choices: {type(value).__name__} (expected a list or null)")
    if len(value) == 0:
        return None
    if len(value) > len(OPTION_LETTERS):
        raise RowError(f"too many choices: {len(value)}")
    out = []
    for c in value:
        if isinstance(c, bool) or not isinstance(c, (str, int, float)):
            raise RowError(f"wrong type for a choice: {type(c).__name__}")
        out.append(str(c))
    return out


def _answer_letter(answer: str, choices: list[str]) -> str:
    """Multiple-choice answers are stored as option letters; option text is mapped to its letter."""
    a = answer.strip().strip("()").strip()
    if len(a) == 1 and a.upper() in OPTION_LETTERS[: len(choices)]:
        return a.upper()
    for i, c in enumerate(choices):
        if normalize_text(answer) == normalize_text(c):
            return OPTION_LETTERS[i]
    raise RowError(f"answer {answer!r} is neither an option letter nor one of the choices")


def _summary(row: dict) -> str:
    """The row as JSON for the rejected set; binary values as their length."""

    def enc(v):
        if isinstance(v, (bytes, bytearray)):
            return f"<{len(v)} bytes>"
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {str(k): enc(x) for k, x in v.items()}
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return repr(v)

    return json.dumps(enc(row), ensure_ascii=False)


class UniqueIds:
    """Streaming duplicate-id check: the first row with an id passes, later ones are rejected with the reason.

    Ids are request ids and join keys downstream, so two rows sharing one would swap or lose results.
    Holds one set of the ids seen (the only state), so it works batch by batch over any size of input.
    """

    def __init__(self, seen: set[str] | None = None):
        self.seen: set[str] = set() if seen is None else seen

    def reason(self, rid) -> str | None:
        """Why a row with this id is a duplicate, or None when it is the first (the id is not recorded)."""
        if str(rid) in self.seen:
            return f"duplicate id: {str(rid)!r} is already used by an earlier row (ids must be unique; give merged sources distinct ids)"
        return None

    def add(self, rid) -> None:
        self.seen.add(str(rid))

    def mark(self, table: pa.Table, error_column: str = "error") -> pa.Table:
        """`table` with `error_column` set to the reason for duplicates; rows already in error are left as they are."""
        errors = table.column(error_column).to_pylist()
        for i, rid in enumerate(table.column("id").to_pylist()):
            if errors[i] is None:
                errors[i] = self.reason(rid)
                self.add(rid)
        index = table.schema.get_field_index(error_column)
        return table.set_column(index, error_column, pa.array(errors, type=pa.string()))


@dataclass
class RowValidator:
    """Stateful validator for one dataset (it remembers ids to reject duplicates)."""

    stage: str
    max_image_bytes: int = 20 * 1024 * 1024
    seen_ids: set = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.ids = UniqueIds(self.seen_ids)

    def check(self, row: dict) -> dict:
        """The canonical row, or RowError with the reason."""
        rid = _text(row, "id")
        duplicate = self.ids.reason(rid)
        if duplicate:
            raise RowError(duplicate)
        question = _text(row, "question")
        answer = _text(row, "answer")
        choices = _choices(row.get("choices"))
        if choices:
            answer = _answer_letter(answer, choices)
        image = check_image(row.get("image"), self.max_image_bytes)
        clean = dict(row)
        clean.update(
            id=rid,
            question=question,
            answer=answer,
            choices=choices,
            image=image,
            source=_text(row, "source", required=False) or "unknown",
            category=_text(row, "category", required=False),
            rationale=_text(row, "rationale", required=False),
        )
        self.ids.add(rid)
        return clean

    def split(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(canonical rows, rejected rows) — together they account for every input row."""
        good, bad = [], []
        for row in rows:
            try:
                good.append(self.check(row))
                self.counts["output"] += 1
            except RowError as exc:
                bad.append(self.reject(row, str(exc)))
        return good, bad

    def reject(self, row: dict, reason: str) -> dict:
        self.counts["rejected"] += 1
        self.counts[f"rejected: {reason.split(':')[0]}"] += 1
        rid = row.get("id")
        image = row.get("image")
        return {
            "id": None if rid is None else str(rid),
            "stage": self.stage,
            "reason": reason,
            "row": _summary({k: v for k, v in row.items() if k != "image"}),
            "image": bytes(image) if isinstance(image, (bytes, bytearray)) else None,
        }
