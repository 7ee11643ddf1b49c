"""The pretrained tiny zoo: built by seed, cached by config hash, two LLMs of one base with different
tokenizers, loaded through the same `load_*` functions as real parts, pretrained on the very token
sequence the stages send (the scene's words where the image tokens stand)."""

import io
import operator
import os
import time

import pytest
import torch
from PIL import Image
from transformers import InternVLVisionModel, Qwen2ForCausalLM

import r1v_ray.model.zoo as zoo_module
from r1v_ray.config import ModelConfig, TinyModelConfig, ZooConfig
from r1v_ray.data import synthetic
from r1v_ray.model.assemble import build_processor
from r1v_ray.model.factory import PartPaths, load_llm, load_vision, part_paths, tiny_text_config, tiny_vision_config
from r1v_ray.model.tokenizer import IMAGE_TOKENS, has_image_tokens
from r1v_ray.model.zoo import REASONING_SPECIAL, TextRenderer, _tokenizers, scene_token, zoo_dir, zoo_key
from r1v_ray.prompts import user_turn

SMALL = dict(rows=32, vision_steps=6, base_steps=6, tune_steps=3, batch_size=4, check_rows=0)


def _cfg(cache: str, **zoo) -> ModelConfig:
    tiny = TinyModelConfig(text_layers=1, vision_layers=1, vocab_size=400)
    return ModelConfig(source="zoo", tiny=tiny, zoo=ZooConfig(cache_dir=cache, **{**SMALL, **zoo}))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    cfg = _cfg(str(tmp_path_factory.mktemp("zoo")))
    return cfg, part_paths(cfg, "unused", task=synthetic)


def test_parts_load_and_the_two_llms_share_a_base_but_not_special_tokens(zoo):
    cfg, paths = zoo
    assert os.path.dirname(paths.vision) == zoo_dir(cfg.tiny, cfg.zoo)
    assert load_vision(paths.vision).config.model_type == "internvl_vision"
    sub, sub_tok = load_llm(paths.substitute_llm)
    reason, reason_tok = load_llm(paths.reasoning_llm)
    assert has_image_tokens(sub_tok) and not set(IMAGE_TOKENS.values()) & set(reason_tok.get_vocab())
    assert REASONING_SPECIAL in reason_tok.get_vocab() and REASONING_SPECIAL not in sub_tok.get_vocab()
    for word in synthetic.SCENE_WORDS:  # one base vocabulary: every scene word has one id in both
        assert sub_tok.convert_tokens_to_ids(scene_token(word)) == reason_tok.convert_tokens_to_ids(scene_token(word))
    # Tuned from one base: the two LLMs are far closer to each other than to a fresh model of their shape.
    fresh = type(sub)(sub.config)
    a, b, c = (torch.cat([p.flatten() for p in m.model.layers.parameters()]) for m in (sub, reason, fresh))
    assert (a - b).norm() < 0.5 * (a - c).norm()


def test_a_cached_zoo_is_reused_and_the_key_follows_the_settings(zoo, monkeypatch):
    cfg, paths = zoo
    monkeypatch.setattr(zoo_module, "build_zoo", lambda *a, **k: pytest.fail("rebuilt a cached zoo"))
    assert part_paths(cfg, "unused", task=synthetic) == paths
    other = _cfg(cfg.zoo.cache_dir, seed=1)
    assert zoo_key(other.tiny, other.zoo) != zoo_key(cfg.tiny, cfg.zoo)
    moved = _cfg("/elsewhere")  # where the cache lives is not part of the key
    assert zoo_key(moved.tiny, moved.zoo) == zoo_key(cfg.tiny, cfg.zoo)


def _in_turn(t: TinyModelConfig, z: ZooConfig) -> tuple[dict, dict]:
    """The tower's and the reasoning LLM's weights as one process building the zoo in turn trains them."""
    torch.set_num_threads(1)  # as the build does
    torch.manual_seed(z.seed)
    rows = zoo_module._rows(synthetic, z, z.rows, "zoo")
    base_tok, sub_tok, reason_tok = _tokenizers(synthetic, t)
    vision = InternVLVisionModel(tiny_vision_config(t))
    zoo_module.pretrain_vision(vision, rows, list(synthetic.SCENE_WORDS), z, lambda *_: None)
    text_cfg = tiny_text_config(t, base_tok)
    text_cfg.vocab_size = max(text_cfg.vocab_size, len(sub_tok), len(reason_tok))
    torch.manual_seed(z.seed + 1)
    renderer = TextRenderer(base_tok, synthetic, text_cfg.vocab_size)
    styles = (zoo_module.direct_response, zoo_module.think_response)
    base, _ = zoo_module.train_lm(
        Qwen2ForCausalLM(text_cfg), renderer, rows, styles, z.base_steps, z.learning_rate, z, print, "base"
    )
    reasoning, _ = zoo_module.train_lm(
        base, renderer, rows, styles[1:], z.tune_steps, z.learning_rate / 4, z, print, "reasoning_llm"
    )
    return vision.state_dict(), reasoning.state_dict()


def _build(cache: str) -> PartPaths:
    return part_paths(_cfg(cache), "unused", task=synthetic)


def test_the_build_is_deterministic_by_seed_with_parts_trained_in_child_processes(tmp_path, monkeypatch):
    """The tower and the reasoning LLM train in child processes: each must get the weights one process would
    (the tower's prediction head draws from the global generator where building the tower left it). The
    reference is a second training from the same seed, so a build that drew from anything but its seed (or
    in another order) fails here too: this is the zoo's determinism check. Build and
    reference each run in a fresh interpreter: an in-process vLLM (earlier tests) turns this process's
    `torch.set_num_threads` into a no-op, and thread counts change the last bits."""
    here = os.path.dirname(os.path.abspath(__file__))  # the children import this module to find its functions
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    cfg = _cfg(str(tmp_path))
    with zoo_module._InChild(_build, str(tmp_path)) as child:
        paths = child.result()
    with zoo_module._InChild(_in_turn, cfg.tiny, cfg.zoo) as child:
        vision, reasoning = child.result()
    for built, state in ((load_vision(paths.vision), vision), (load_llm(paths.reasoning_llm)[0], reasoning)):
        assert all(torch.equal(v, state[k]) for k, v in built.state_dict().items())


def test_a_part_in_its_own_process_returns_its_result_raises_its_failure_and_is_stopped_when_left():
    # The three children start at once: each is an interpreter importing torch, ~5 s apiece one after another.
    with (
        zoo_module._InChild(operator.add, 2, 3) as adds,
        zoo_module._InChild(operator.truediv, 1, 0) as divides,
        zoo_module._InChild(time.sleep, 600) as sleeps,
    ):
        assert adds.result() == 5
        with pytest.raises(RuntimeError, match="zoo's truediv failed in its process"):
            divides.result()
        # the sleeper is left before its result is asked for, as when the parent fails
    assert sleeps.proc.returncode is not None and not os.path.exists(sleeps.work)
    assert all(not os.path.exists(child.work) for child in (adds, divides))


def test_the_zoo_needs_a_task():
    with pytest.raises(ValueError, match="pass task="):
        part_paths(ModelConfig(source="zoo"), "unused")


def test_pretraining_text_is_the_stage_prompt_with_scene_words_at_the_image_tokens():
    """What every stage sends (chat template, processor, `user_turn`) and what the LMs were pretrained on
    differ only where the image's tokens stand: a template drift would leave the LMs reading another text."""
    t = TinyModelConfig(vocab_size=400)
    _, sub_tok, _ = _tokenizers(synthetic, t)
    processor = build_processor(sub_tok, tiny_vision_config(t), 0.5, 1)
    renderer = TextRenderer(sub_tok, synthetic, len(sub_tok))
    gen = torch.Generator().manual_seed(0)
    for i in range(len(synthetic.TASKS)):
        row = synthetic.make_row(0, "test", i, 64, with_scene=True)
        text = processor.apply_chat_template([user_turn(row)], add_generation_prompt=True, tokenize=False)
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        real = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        ids, start = renderer.encode(row, "", gen)
        pretrained = ids[:start]
        image_pos = [k for k, v in enumerate(real) if v == sub_tok.convert_tokens_to_ids("<IMG_CONTEXT>")]
        assert len(real) == len(pretrained) and len(image_pos) == len(row["scene"]) == 4
        assert [pretrained[k] for k in image_pos] == [
            sub_tok.convert_tokens_to_ids(scene_token(w)) for w in row["scene"]
        ]
        delims = {image_pos[0] - 1, image_pos[-1] + 1}  # <img>, </img>: random tokens in pretraining
        assert all(real[k] == pretrained[k] for k in range(len(real)) if k not in set(image_pos) | delims)
