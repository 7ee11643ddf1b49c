"""Strict loading of a typed dataclass tree: YAML in, `key=value` overrides, every value checked.

An unknown key, a wrong type or a missing required value fails naming the key and the closest valid one.
`r1v_ray.config` holds the tree itself and runs the cross-field rules after loading.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def _closest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; the only conversions are int -> float and
    numeric strings -> float (YAML 1.1 reads 1e-4 as a string)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, args, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{key}: expected one of {list(args)}, got {value!r}{_closest(str(value), map(str, args))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        return _coerce_float(value, key)
    if tp in _PLAIN:
        # bool is an int to Python, never to the config
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {_PLAIN[tp]}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


_PLAIN = {int: "an integer", bool: "true or false", str: "a string"}  # taken as they are, never converted


def _coerce_union(value: Any, tp: Any, args: tuple, key: str) -> Any:
    """None where the union allows it, else the first member that takes the value."""
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{key}: the number is too large") from None


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{full}'{_closest(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            full = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"missing required config key '{full}'")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(tree: dict, dotted: str, value: Any, cls: type) -> None:
    """Apply one `a.b.c=value` override, validating every path segment."""
    parts = dotted.split(".")
    node, node_cls, walked = tree, cls, []
    for i, part in enumerate(parts):
        walked.append(part)
        names = [f.name for f in dataclasses.fields(node_cls)] if dataclasses.is_dataclass(node_cls) else None
        if names is not None and part not in names:
            raise ConfigError(f"unknown config key '{'.'.join(walked)}'{_closest(part, names)}")
        if i == len(parts) - 1:
            node[part] = value
            return
        child_cls = typing.get_type_hints(node_cls)[part] if names is not None else None
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(walked)}' is a value, not a section")
        node_cls = child_cls


def _yaml(text: str, where: str) -> Any:
    """yaml.safe_load, with its errors (syntax, an unknown tag, a 5,000-digit number, deep nesting) as ConfigError."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    return key, _yaml(raw, f"--set {key}") if raw.strip() else ""


def load_tree(path: str | Path | None, overrides: typing.Sequence[str], cls: type) -> Any:
    """`cls` from YAML (or only defaults when `path` is None) with `key=value` overrides applied."""
    tree: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config file ({type(exc).__name__}: {exc})") from None
        tree = _yaml(text, str(path)) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides:
        key, value = parse_override(item)
        _set_path(tree, key, value, cls)
    return from_dict(cls, tree)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
