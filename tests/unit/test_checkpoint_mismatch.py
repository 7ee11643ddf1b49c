"""Which checkpoints a running rollout engine may load in place (`checkpoint_mismatch`): the same config and
tokenizer; anything else needs an engine of its own (`HeldWorkers` then starts new workers)."""

import json

from r1v_ray.engines.rollout.actor import checkpoint_mismatch


def _checkpoint(path, config: dict, vocab: dict):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    return str(path)


def test_same_config_and_tokenizer_load_in_place_anything_else_does_not(tmp_path):
    config, vocab = {"architectures": ["LlavaForConditionalGeneration"], "hidden_size": 64}, {"a": 0, "b": 1}
    held = _checkpoint(tmp_path / "held", config, vocab)
    # Key order and whitespace are not a difference: the files are compared as JSON.
    same = _checkpoint(tmp_path / "same", dict(reversed(config.items())), vocab)
    assert checkpoint_mismatch(held, same) is None
    wider = _checkpoint(tmp_path / "wider", {**config, "hidden_size": 128}, vocab)
    assert checkpoint_mismatch(held, wider) == "config.json differs"
    other_vocab = _checkpoint(tmp_path / "vocab", config, {**vocab, "<image>": 2})
    assert checkpoint_mismatch(held, other_vocab) == "tokenizer.json differs"
    (tmp_path / "no_tok").mkdir()
    (tmp_path / "no_tok" / "config.json").write_text(json.dumps(config))
    assert checkpoint_mismatch(held, str(tmp_path / "no_tok")).startswith("tokenizer.json missing in ")
