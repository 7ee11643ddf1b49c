"""Shared fixtures: tiny model parts and a tiny R1V checkpoint, built once per test session."""

from __future__ import annotations

import os

import pytest

# Keep vLLM/HF caches inside the test session's temp space, never ~/.cache or a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def ray_data_as_the_stages_run_it():
    """Tests that start Ray themselves run Ray Data with init_ray's settings, as every stage does: rows kept in
    order, Parquet through the V1 reader. Ray's default V2 reader starts up to 32 footer-reading actors per
    read, each a process importing Ray Data: 80 worker processes for one 12-row distill-and-score test (51 s
    against 76 s with V1)."""
    from r1v_ray.ray_connect import ray_data_defaults

    ray_data_defaults()


@pytest.fixture(scope="session")
def tiny_cfg():
    from r1v_ray.config import TinyModelConfig

    return TinyModelConfig()


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory, tiny_cfg):
    from r1v_ray.data.synthetic import corpus
    from r1v_ray.model.factory import write_tiny_parts

    return write_tiny_parts(tiny_cfg, str(tmp_path_factory.mktemp("tiny_parts")), corpus)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_parts):
    """A saved R1V checkpoint: tiny vision + substitute LLM + fresh projector."""
    from r1v_ray.config import ProjectorConfig
    from r1v_ray.model.assemble import assemble, build_processor, save_checkpoint
    from r1v_ray.model.factory import load_llm, load_vision

    vision = load_vision(tiny_parts.vision)
    llm, tok = load_llm(tiny_parts.substitute_llm)
    model = assemble(vision, llm, tok, ProjectorConfig(), seed=3)
    processor = build_processor(tok, model.config.vision_config, 0.5, max_tiles=1)
    path = str(tmp_path_factory.mktemp("ckpt") / "r1v")
    return save_checkpoint(model, processor, path, meta={"stage": "test"})
