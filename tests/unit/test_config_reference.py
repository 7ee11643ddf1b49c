"""The configuration reference in docs/ is the one generated from the dataclasses."""

import os

from r1v_ray.config import load_config
from r1v_ray.config_reference import render, rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_docs_reference_is_current():
    with open(os.path.join(ROOT, "docs", "config-reference.md")) as f:
        assert f.read() == render(), "regenerate: python -m r1v_ray.config_reference > docs/config-reference.md"


def test_every_loadable_key_is_listed_once():
    keys = [key for key, *_ in rows()]
    assert len(keys) == len(set(keys))
    for key in ("run_dir", "sft.global_batch_size", "grpo.group_size", "serve.token_env", "model.tiny.seed"):
        assert key in keys
    cfg = load_config(None, [f"{k}={v}" for k, v in [("grpo.group_size", 3)]])
    assert cfg.grpo.group_size == 3


def test_descriptions_come_from_the_field_line_or_the_lines_above():
    described = {key: text for key, _, _, text in rows()}
    assert described["model.tiny.text_heads"] == "head_dim 32: vLLM CPU needs head_dim >= 32"  # on its line
    assert described["model.trainable_prefixes"].startswith("Parameter-name prefixes")  # the line above
