"""R1V assembly, checkpoints, trainable parts and re-assembly on tiny models (no Ray, no vLLM)."""

import io
import os

import pytest
import torch
from PIL import Image

from r1v_ray.config import ProjectorConfig, TinyModelConfig
from r1v_ray.data.synthetic import make_row
from r1v_ray.model import (
    ReassemblyError,
    assemble,
    load_checkpoint,
    parameter_summary,
    reassemble,
    save_checkpoint,
    set_trainable,
    trainable_state_dict,
)
from r1v_ray.model.assemble import read_meta
from r1v_ray.model.factory import load_llm, load_vision, tiny_text_config
from r1v_ray.model.tokenizer import IMAGE_TOKENS, assistant_text, has_image_tokens


def _inputs(processor, index=0):
    row = make_row(0, "test", index)
    image = Image.open(io.BytesIO(row["image"])).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_checkpoint_is_standard_hf(tiny_checkpoint):
    files = set(os.listdir(tiny_checkpoint))
    assert "model.safetensors" in files and "chat_template.jinja" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    model, processor = load_checkpoint(tiny_checkpoint)
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    inputs = _inputs(processor)
    n_img = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert n_img == model.config.image_seq_length == 4
    with torch.no_grad():
        new = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, -8:]
        # generate (KV cache, image features computed once) picks what full forward passes pick
        ids = inputs["input_ids"]
        for token in new:
            step = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
            assert model(**step).logits[0, -1].argmax().item() == token.item()
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    assert read_meta(tiny_checkpoint)["stage"] == "test"


def test_image_changes_the_logits(tiny_checkpoint):
    """The projector really feeds image features into the LLM."""
    model, processor = load_checkpoint(tiny_checkpoint)
    a, b = _inputs(processor, 0), _inputs(processor, 1)
    with torch.no_grad():
        la = model(**a).logits[0, -1]
        b = dict(a, pixel_values=b["pixel_values"])
        lb = model(**b).logits[0, -1]
    assert not torch.allclose(la, lb)


def test_projector_only_step_leaves_vision_and_llm_bit_identical(tiny_checkpoint):
    model, processor = load_checkpoint(tiny_checkpoint)
    trainable = set_trainable(model, ["projector"])
    assert trainable and all(n.startswith("model.multi_modal_projector.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    inputs = _inputs(processor)
    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    opt.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name
            assert param.grad is None, name
    assert set(trainable_state_dict(model)) == set(trainable)
    summary = parameter_summary(model)
    assert "projector" in summary and "vision" in summary and "llm" in summary and "trainable share" in summary


def test_trainable_prefix_errors(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="'projecter' matches no parameter"):
        set_trainable(model, ["projecter"])
    names = set_trainable(model, ["projector", "llm"])
    assert any(n.startswith("model.language_model.") for n in names)
    assert not any(n.startswith("model.vision_tower.") for n in names)


def test_reassembly_onto_reasoning_llm(tiny_checkpoint, tiny_parts, tmp_path):
    source, _ = load_checkpoint(tiny_checkpoint)
    llm, tok = load_llm(tiny_parts.reasoning_llm)
    assert not has_image_tokens(tok)
    sub_vocab = load_llm(tiny_parts.substitute_llm)[1].get_vocab()
    assert tok.get_vocab() != sub_vocab  # a different tokenizer
    model, processor, record = reassemble(source, llm, tok, max_tiles=1)
    assert record["image_tokens_added"] == len(IMAGE_TOKENS) and has_image_tokens(tok)
    # The projector moved over unchanged; the LLM is the reasoning one.
    for name, p in source.model.multi_modal_projector.state_dict().items():
        assert torch.equal(model.model.multi_modal_projector.state_dict()[name], p)
    reasoning_llm, _ = load_llm(tiny_parts.reasoning_llm)
    assert torch.equal(
        model.model.language_model.layers[0].mlp.up_proj.weight, reasoning_llm.model.layers[0].mlp.up_proj.weight
    )
    path = save_checkpoint(model, processor, str(tmp_path / "reassembled"))
    again, proc2 = load_checkpoint(path)
    assert again.config.image_token_id == proc2.tokenizer.context_image_token_id
    inputs = _inputs(proc2)
    with torch.no_grad():
        again(**inputs)


def test_reassembly_grows_embeddings_for_new_tokens(tiny_checkpoint, tiny_parts):
    source, _ = load_checkpoint(tiny_checkpoint)
    llm, tok = load_llm(tiny_parts.reasoning_llm)
    tok.add_tokens([f"<extra_{i}>" for i in range(200)])  # more tokens than embedding rows
    rows_before = llm.get_input_embeddings().num_embeddings
    model, _, record = reassemble(source, llm, tok, max_tiles=1)
    assert record["embedding_rows"][0] == rows_before
    assert model.get_input_embeddings().num_embeddings >= len(tok) > rows_before


def test_reassembly_refuses_other_hidden_size(tiny_checkpoint, tiny_parts):
    from transformers import Qwen2ForCausalLM

    source, _ = load_checkpoint(tiny_checkpoint)
    _, tok = load_llm(tiny_parts.reasoning_llm)
    wide = TinyModelConfig(text_hidden=256, text_heads=8)
    other = Qwen2ForCausalLM(tiny_text_config(wide, tok))
    with pytest.raises(ReassemblyError, match="hidden sizes disagree.*128.*256"):
        reassemble(source, other, tok)


def test_assemble_checks_embeddings_and_tokens(tiny_parts):
    vision = load_vision(tiny_parts.vision)
    llm, tok = load_llm(tiny_parts.reasoning_llm)
    with pytest.raises(ValueError, match="lacks the image tokens"):
        assemble(vision, llm, tok, ProjectorConfig())
    with pytest.raises(ValueError, match="downsample_ratio"):
        from r1v_ray.model.assemble import image_seq_length

        image_seq_length(vision.config, 0.3)


def test_chat_template_r1_history(tiny_checkpoint):
    _, processor = load_checkpoint(tiny_checkpoint)
    reply = assistant_text("count the red ones", "Answer: \\boxed{2}")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And blue?"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<IMG_CONTEXT>") == 1
    assert "count the red ones" not in text and "Answer: \\boxed{2}" in text  # past reasoning dropped
    last = processor.apply_chat_template(messages[:2], tokenize=False)
    assert "<think>\ncount the red ones\n</think>" in last  # the trained turn keeps it
    ids = processor.tokenizer(reply)["input_ids"]
    assert processor.tokenizer.decode(ids, skip_special_tokens=True).startswith("<think>")
