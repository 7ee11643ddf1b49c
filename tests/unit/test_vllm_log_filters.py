"""The vLLM warnings the rollout engine drops are exactly the expected ones, and still vLLM's wording."""

import importlib
import inspect
import logging
import re

import pytest

from r1v_ray.engines.rollout.vllm_engine import EXPECTED_VLLM_WARNINGS, quiet_expected_vllm_warnings


@pytest.mark.parametrize("name", sorted(EXPECTED_VLLM_WARNINGS))
def test_only_the_expected_warning_is_dropped(name, caplog):
    quiet_expected_vllm_warnings()
    quiet_expected_vllm_warnings()  # idempotent: one filter per logger
    log = logging.getLogger(name)
    assert len(log.filters) == 1
    text = EXPECTED_VLLM_WARNINGS[name]
    with caplog.at_level(logging.WARNING, logger=name):
        log.warning("Layer: %s", text)
        log.warning("CUDA out of memory")
    assert [r.getMessage() for r in caplog.records if r.name == name] == ["CUDA out of memory"]


@pytest.mark.parametrize("name", sorted(EXPECTED_VLLM_WARNINGS))
def test_the_dropped_text_is_in_vllms_source(name):
    """A vLLM upgrade that rewords a message would otherwise bring the flood back unnoticed."""
    source = re.sub(r'"\s+"', "", inspect.getsource(importlib.import_module(name)))  # join implicit concatenation
    assert EXPECTED_VLLM_WARNINGS[name] in source
