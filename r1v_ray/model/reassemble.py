"""Model re-assembly (paper 2.1): move a trained projector onto another LLM of the same architecture."""

from __future__ import annotations

import copy

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    InternVLForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from r1v_ray import store
from r1v_ray.config import ProjectorConfig
from r1v_ray.model.assemble import (
    DTYPES,
    assemble,
    build_processor,
    llm_refs,
    meta_skeleton,
    part_refs,
    r1v_config,
    stream_model,
)
from r1v_ray.model.safetensors_io import DEFAULT_SHARD_BYTES, load_tensor
from r1v_ray.model.tokenizer import ensure_image_tokens


class ReassemblyError(ValueError):
    pass


def _check_compatible(src_text, llm_config) -> None:
    if src_text.hidden_size != llm_config.hidden_size:
        raise ReassemblyError(
            f"hidden sizes disagree: the projector outputs {src_text.hidden_size} (from {src_text.model_type}) "
            f"but the target LLM's hidden_size is {llm_config.hidden_size}; re-assembly needs an LLM of the "
            "same architecture and width (train a new projector with mlp_init for this LLM)"
        )
    if src_text.model_type != llm_config.model_type:
        raise ReassemblyError(
            f"architectures disagree: projector trained against {src_text.model_type!r}, target is "
            f"{llm_config.model_type!r}; the paper re-assembles onto an LLM of the same architecture"
        )


def reassemble(
    source: InternVLForConditionalGeneration,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    max_tiles: int = 12,
    image_processor=None,
):
    """(model, processor, record): source's vision encoder and projector on `llm`, with `tokenizer`.

    The new tokenizer gets the image tokens when it lacks them, and the LLM's
    embeddings grow to match (new rows mean-initialized). Refuses when the
    projector's output size is not the LLM's hidden size.
    """
    _check_compatible(source.config.text_config, llm.config)
    added = ensure_image_tokens(tokenizer)
    old_rows = llm.get_input_embeddings().num_embeddings
    if old_rows < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    projector_cfg = ProjectorConfig(
        downsample_ratio=source.config.downsample_ratio, hidden_act=source.config.projector_hidden_act
    )
    model = assemble(
        copy.deepcopy(source.model.vision_tower),
        llm,
        tokenizer,
        projector_cfg,
        projector_module=copy.deepcopy(source.model.multi_modal_projector),
    )
    processor = build_processor(
        tokenizer, model.config.vision_config, projector_cfg.downsample_ratio, max_tiles, image_processor
    )
    record = {
        "image_tokens_added": added,
        "embedding_rows": [old_rows, llm.get_input_embeddings().num_embeddings],
        "hidden_size": llm.config.hidden_size,
        "target_model_type": llm.config.model_type,
    }
    return model, processor, record


def _resized_embeddings(text_config, refs: dict, rows: int, dtype, seed: int) -> dict[str, torch.Tensor]:
    """The input embeddings (and an untied lm_head) grown to `rows` rounded up to 64, new rows drawn the way
    `resize_token_embeddings(mean_resizing=True)` draws them (HF's own code, on these two tensors only)."""
    llm = meta_skeleton(text_config)
    emb_name, head_name = "model.language_model.embed_tokens.weight", "lm_head.weight"
    weight = load_tensor(refs[emb_name], dtype)
    old = torch.nn.Embedding(*weight.shape, padding_idx=text_config.pad_token_id, _weight=weight)
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = llm._get_resized_embeddings(old, rows, pad_to_multiple_of=64, mean_resizing=True)
        out[emb_name] = new.weight.data
        if head_name in refs:  # untied: the head grows too
            head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            head.weight = torch.nn.Parameter(load_tensor(refs[head_name], dtype), requires_grad=False)
            out[head_name] = llm._get_resized_lm_head(head, new.weight.shape[0], mean_resizing=True).weight.data
    return out


def reassemble_checkpoint(
    source_path: str,
    llm_path: str,
    out: str,
    max_tiles: int = 12,
    meta: dict | None = None,
    seed: int = 0,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict:
    """`reassemble` from checkpoints on disk into `out`, never holding either LLM whole: the model is laid
    out on the meta device and each weight is read, converted to `dtype` (None: as stored) and written
    alone; only the embeddings, when they grow, are held (old and new). Returns the record (also in meta)."""
    source_path, llm_path = store.stage_in(source_path), store.stage_in(llm_path)  # URIs: node-local copies
    src_config, llm_config = AutoConfig.from_pretrained(source_path), AutoConfig.from_pretrained(llm_path)
    _check_compatible(src_config.text_config, llm_config)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    added = ensure_image_tokens(tokenizer)
    _, refs = llm_refs(llm_path)
    torch_dtype = DTYPES[dtype] if dtype else None
    old_rows = llm_config.vocab_size
    grown = {}
    if old_rows < len(tokenizer):
        grown = _resized_embeddings(llm_config, refs, len(tokenizer), torch_dtype, seed)
        llm_config.vocab_size = grown["model.language_model.embed_tokens.weight"].shape[0]
    projector_cfg = ProjectorConfig(
        downsample_ratio=src_config.downsample_ratio, hidden_act=src_config.projector_hidden_act
    )
    config = r1v_config(src_config.vision_config, llm_config, tokenizer, projector_cfg)
    kept = part_refs(source_path, meta_skeleton(src_config, InternVLForConditionalGeneration))
    kept = {n: r for n, r in kept.items() if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    sources = kept | refs | grown
    llm_dtype = torch_dtype or next(iter(refs.values())).dtype
    dtypes = {n: torch_dtype or s.dtype for n, s in sources.items()}
    dtypes |= {n: llm_dtype for n in kept if n.startswith("model.multi_modal_projector.")}
    skeleton = meta_skeleton(config, InternVLForConditionalGeneration)
    skeleton.generation_config.eos_token_id = tokenizer.eos_token_id
    skeleton.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = AutoProcessor.from_pretrained(source_path).image_processor
    processor = build_processor(
        tokenizer, config.vision_config, projector_cfg.downsample_ratio, max_tiles, image_processor
    )
    record = {
        "image_tokens_added": added,
        "embedding_rows": [old_rows, llm_config.vocab_size],
        "hidden_size": llm_config.hidden_size,
        "target_model_type": llm_config.model_type,
    }
    stream_model(skeleton, sources, dtypes, processor, out, {**(meta or {}), **record}, max_shard_bytes)
    return record
