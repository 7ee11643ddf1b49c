"""Fuzz: any --set override or YAML file loads, or fails with a ConfigError that names the key (no traceback
from deep inside the loader); what loads dumps and loads back the same."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import typing

import pytest
from fuzz_settings import examples
from hypothesis import given
from hypothesis import strategies as st

from r1v_ray.config import ConfigError, R1VConfig, dump_config, load_config


def _keys(cls, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        out.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], key + ".")
    return out


KEYS = _keys(R1VConfig)
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + ".x") | st.text(max_size=10)
values = st.one_of(
    st.text(max_size=16),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["[", "]", "{", "}", ":", "- a", "a: b", "{a: 1}", "[1, [2]]", '"q"', "'", "&a", "*a"]),
    st.sampled_from(["!!python/object:os.system x", "1e400", "1" + "0" * 400, "9" * 5000, "[" * 200, "null"]),
    st.sampled_from(["~", "true", "no", ".inf", "-.nan", "0x1F", "1_000", "2e-4", "float32", "vllm", "{}"]),
)
overrides = st.builds(lambda k, v: f"{k}={v}", keys, values) | st.text(max_size=16)


def _names_a_key(message: str, items: list[str]) -> bool:
    for item in items:
        if "=" not in item:
            if item in message:
                return True
            continue
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] in message:
            return True
    return False


def _round_trips(cfg) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w") as f:
            f.write(dump_config(cfg))
        assert dump_config(load_config(path)) == dump_config(cfg)


@examples(500)
@given(st.lists(overrides, max_size=4))
def test_overrides_load_or_fail_naming_the_key(items):
    try:
        cfg = load_config(None, items)
    except ConfigError as exc:
        assert _names_a_key(str(exc), items), str(exc)
        return
    assert isinstance(cfg, R1VConfig)
    _round_trips(cfg)


yaml_texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.builds(lambda k, v: f"{k.split('.')[-1]}: {v}", keys, values), max_size=4).map("\n".join),
    st.lists(st.builds(lambda k, v: "  " * k.count(".") + f"{k.split('.')[-1]}: {v}", keys, values), max_size=4).map(
        "\n".join
    ),
)


@examples(200)
@given(yaml_texts)
def test_any_yaml_file_loads_or_fails_with_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            assert str(exc)
            return
    assert isinstance(cfg, R1VConfig)


def test_the_crashes_fuzzing_found_are_config_errors_naming_the_key(tmp_path):
    """Each raised something else from inside yaml or float() before (ParserError, ConstructorError,
    OverflowError, ValueError, RecursionError); an unreadable file raised UnicodeDecodeError."""
    for item, key in [
        ("seed=[", "seed"),
        ("seed=!!python/object:os.system x", "seed"),
        ("grpo.learning_rate=1" + "0" * 400, "grpo.learning_rate"),
        ("seed=" + "9" * 5000, "seed"),
        ("seed=" + "[" * 5000, "seed"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [item])
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: \xff\n")
    for path in (bad, tmp_path / "missing.yaml"):
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            load_config(path)
