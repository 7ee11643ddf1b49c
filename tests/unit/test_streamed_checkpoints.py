"""Assembly and re-assembly streamed from the parts' safetensors (meta-device layout, one tensor at a time)
write what the in-memory path writes, bit for bit; the shard writer and the slice reader they rest on."""

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from r1v_ray.config import ProjectorConfig
from r1v_ray.model import load_checkpoint, reassemble, save_checkpoint
from r1v_ray.model.assemble import assemble_from_parts, checkpoint_complete, streamed_checkpoint
from r1v_ray.model.factory import load_llm
from r1v_ray.model.reassemble import reassemble_checkpoint
from r1v_ray.model.safetensors_io import INDEX_FILE, TensorRef, checkpoint_tensors, load_flat_range, load_tensor

NON_WEIGHT_FILES = [
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "r1v_meta.json",
]


def _weights(path: str) -> dict[str, torch.Tensor]:
    return {key: load_tensor(ref) for key, ref in checkpoint_tensors(path).items()}


def _assert_same_checkpoint(old: str, new: str) -> None:
    a, b = _weights(old), _weights(new)
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    for name in NON_WEIGHT_FILES:
        with open(os.path.join(old, name), "rb") as f, open(os.path.join(new, name), "rb") as g:
            assert f.read() == g.read(), name


def test_assembly_from_parts_writes_what_in_memory_assembly_writes(tiny_parts, tiny_checkpoint, tmp_path):
    # tiny_checkpoint: assemble(load_vision, load_llm, seed=3) + save_pretrained (the in-memory path)
    out = assemble_from_parts(
        tiny_parts.vision, tiny_parts.substitute_llm, str(tmp_path / "a"), ProjectorConfig(), 1, 3, {"stage": "test"}
    )
    _assert_same_checkpoint(tiny_checkpoint, out)


def test_assembly_in_bfloat16_converts_each_tensor(tiny_parts, tiny_checkpoint, tmp_path):
    out = assemble_from_parts(
        tiny_parts.vision, tiny_parts.substitute_llm, str(tmp_path / "b"), ProjectorConfig(), 1, 3, dtype="bfloat16"
    )
    ref, got = _weights(tiny_checkpoint), _weights(out)
    assert all(torch.equal(got[k], ref[k].to(torch.bfloat16)) for k in ref)
    model, _ = load_checkpoint(out, dtype="bfloat16")
    assert model.config.dtype == torch.bfloat16


def test_reassembly_from_checkpoints_matches_in_memory_with_grown_embeddings(tiny_parts, tiny_checkpoint, tmp_path):
    llm_dir = str(tmp_path / "reasoning")
    shutil.copytree(tiny_parts.reasoning_llm, llm_dir)
    tok = AutoTokenizer.from_pretrained(llm_dir)
    tok.add_tokens([f"<extra_{i}>" for i in range(200)])  # more tokens than rows: both tables grow
    tok.save_pretrained(llm_dir)

    source, source_processor = load_checkpoint(tiny_checkpoint)
    llm, tok = load_llm(llm_dir)
    torch.manual_seed(5)
    model, processor, record = reassemble(source, llm, tok, 1, source_processor.image_processor)
    old = save_checkpoint(model, processor, str(tmp_path / "old"), meta={"stage": "x", **record})

    # small shards: the streamed path writes several files and HF's index
    new = str(tmp_path / "new")
    got = reassemble_checkpoint(tiny_checkpoint, llm_dir, new, 1, {"stage": "x"}, seed=5, max_shard_bytes=300_000)
    assert got == record and got["embedding_rows"][1] > got["embedding_rows"][0]
    assert os.path.exists(os.path.join(new, INDEX_FILE)) and checkpoint_complete(new)
    _assert_same_checkpoint(old, new)
    again, _ = load_checkpoint(new)
    assert again.get_input_embeddings().num_embeddings == got["embedding_rows"][1]


def test_flat_range_reads_exact_slices(tmp_path):
    tensors = {"cube": torch.arange(4 * 5 * 3, dtype=torch.float32).reshape(4, 5, 3), "line": torch.arange(7)}
    tensors["scalar"] = torch.tensor(2.5)
    file = str(tmp_path / "t.safetensors")
    save_file(tensors, file)
    refs = {k: TensorRef(file, k, v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    for start, end in [(0, 60), (0, 0), (7, 8), (14, 16), (13, 47), (59, 60), (30, 60)]:
        assert torch.equal(load_flat_range(refs["cube"], start, end), tensors["cube"].reshape(-1)[start:end])
    assert torch.equal(load_flat_range(refs["line"], 2, 5), torch.arange(2, 5))
    assert load_flat_range(refs["scalar"], 0, 1).item() == 2.5
    assert load_flat_range(refs["cube"], 3, 9, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cube: range \\[50, 61\\) outside its 60 elements"):
        load_flat_range(refs["cube"], 50, 61)


def test_streamed_checkpoint_refuses_missing_or_misshapen_tensors(tiny_checkpoint, tmp_path):
    model, processor = load_checkpoint(tiny_checkpoint)
    specs = {n: (t.dtype, tuple(t.shape)) for n, t in model.state_dict().items()}
    out = str(tmp_path / "partial")
    with pytest.raises(RuntimeError, match="checkpoint incomplete: 1 tensors never written"):
        with streamed_checkpoint(model, specs, processor, out) as write:
            for name, tensor in list(model.state_dict().items())[1:]:
                write(name, tensor)
    with pytest.raises(ValueError, match="lm_head.weight: declared torch.float32 \\(704, 128\\), got"):
        with streamed_checkpoint(model, specs, processor, out) as write:
            write("lm_head.weight", torch.zeros(3))
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.startswith("partial")]
