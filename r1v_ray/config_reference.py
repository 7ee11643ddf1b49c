"""The configuration reference (`docs/config-reference.md`), generated from `R1VConfig` itself.

Each key's type and default come from the dataclasses and its description from the comment on or
above its line in `config.py`, so the reference cannot drift from the code (a test compares the file
with this output). Regenerate with `python -m r1v_ray.config_reference > docs/config-reference.md`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

from r1v_ray.config import R1VConfig

_FIELD = re.compile(r"^\s+(\w+)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """{field name: the comment on its line, else the comment lines right above it}."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", '"""')):
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = trailing or " ".join(pending)
        pending = []
    return comments


def _type_text(tp: typing.Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def _default_text(value: typing.Any) -> str:
    return json.dumps(value, default=str)


def rows(cls: type = R1VConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every leaf key, in declaration order."""
    out: list[tuple[str, str, str, str]] = []
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(default, f.name)
        if dataclasses.is_dataclass(tp):
            out.extend(rows(tp, f"{prefix}{f.name}."))
            continue
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            value = [dataclasses.asdict(v) for v in value]
        out.append((prefix + f.name, _type_text(tp), _default_text(value), comments.get(f.name, "")))
    return out


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `r1v_ray/config.py` by `python -m r1v_ray.config_reference`; do not edit by hand.",
        "Defaults are the paper's settings; `configs/demo/tiny.yaml` shrinks them for 2 CPU cores.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, tp, value, text in rows():
        cells = [f"`{key}`", f"`{tp}`", f"`{value}`", text]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
