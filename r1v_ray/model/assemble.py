"""R1V = vision encoder ∘ MLP projector ∘ LLM, in the HF `InternVLForConditionalGeneration` layout.

A checkpoint saved here (safetensors, processor, tokenizer, chat template) loads
unchanged in transformers (`AutoModelForImageTextToText`) and in `vllm.LLM`.
"""

from __future__ import annotations

import json
import os

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

from r1v_ray import store
from r1v_ray.config import ProjectorConfig
from r1v_ray.data.io import resolve_fs
from r1v_ray.model.tokenizer import CHAT_TEMPLATE, has_image_tokens

META_FILE = "r1v_meta.json"  # lineage: which projector went onto which LLM, trained by which stage
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def image_seq_length(vision_config, downsample_ratio: float) -> int:
    """Image tokens per tile after pixel shuffle: (image/patch)^2 * ratio^2."""
    side = vision_config.image_size[0] // vision_config.patch_size[0]
    tokens = side * side * downsample_ratio * downsample_ratio
    if tokens != int(tokens) or tokens < 1:
        raise ValueError(
            f"model.projector.downsample_ratio={downsample_ratio} does not divide a {side}x{side} patch grid; "
            "use a ratio r with (image_size/patch_size)*r an integer"
        )
    return int(tokens)


def r1v_config(
    vision_config, text_config, tokenizer: PreTrainedTokenizerBase, projector: ProjectorConfig
) -> InternVLConfig:
    if not has_image_tokens(tokenizer):
        raise ValueError("the tokenizer lacks the image tokens; call r1v_ray.model.tokenizer.ensure_image_tokens first")
    cfg = InternVLConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length(vision_config, projector.downsample_ratio),
        downsample_ratio=projector.downsample_ratio,
        projector_hidden_act=projector.hidden_act,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    cfg.architectures = ["InternVLForConditionalGeneration"]
    return cfg


def new_projector(config: InternVLConfig, seed: int = 0) -> InternVLMultiModalProjector:
    """LayerNorm + Linear + GELU + Linear, initialized like the HF model initializes it."""
    gen = torch.Generator().manual_seed(seed)
    proj = InternVLMultiModalProjector(config)
    std = getattr(config.text_config, "initializer_range", 0.02)
    with torch.no_grad():
        for lin in (proj.linear_1, proj.linear_2):
            lin.weight.normal_(0.0, std, generator=gen)
            lin.bias.zero_()
    return proj


def assemble(
    vision_tower: torch.nn.Module,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    projector: ProjectorConfig | None = None,
    projector_module: torch.nn.Module | None = None,
    seed: int = 0,
) -> InternVLForConditionalGeneration:
    """Join a vision encoder and a causal LLM with a (new or given) projector.

    The submodules are moved in, not copied, and the skeleton is built on the
    meta device, so a 32B LLM is never held twice.
    """
    projector = projector or ProjectorConfig()
    config = r1v_config(vision_tower.config, llm.config, tokenizer, projector)
    if llm.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(
            f"the LLM has {llm.get_input_embeddings().num_embeddings} embeddings but the tokenizer has "
            f"{len(tokenizer)} tokens; resize the LLM's embeddings (re-assembly does this)"
        )
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    if projector_module is None:
        projector_module = new_projector(config, seed)
    expected = (
        config.vision_config.hidden_size * int(1 / projector.downsample_ratio) ** 2,
        config.text_config.hidden_size,
    )
    got = (projector_module.linear_1.in_features, projector_module.linear_2.out_features)
    if got != expected:
        raise ValueError(f"projector maps {got[0]} -> {got[1]} but vision/LLM need {expected[0]} -> {expected[1]}")
    model.model.multi_modal_projector = projector_module.to(next(llm.parameters()).dtype)
    if config.tie_word_embeddings:
        model.tie_weights()
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"assembly left tensors on the meta device: {leftover[:5]}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    vision_config,
    downsample_ratio: float,
    max_tiles: int = 12,
    image_processor: GotOcr2ImageProcessor | None = None,
) -> InternVLProcessor:
    """The InternVL processor for this vision encoder: tiles of the encoder's input size."""
    height, width = vision_config.image_size
    if image_processor is None:
        image_processor = GotOcr2ImageProcessor(
            size={"height": height, "width": width},
            crop_to_patches=max_tiles > 1,
            min_patches=1,
            max_patches=max_tiles,
        )
    video = InternVLVideoProcessor(size={"height": height, "width": width})
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video,
        image_seq_length=image_seq_length(vision_config, downsample_ratio),
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
    )


def save_checkpoint(model: PreTrainedModel, processor: InternVLProcessor, path: str, meta: dict | None = None) -> str:
    """Weights as safetensors plus processor, tokenizer and chat template: a standard HF checkpoint.

    A checkpoint folder is always whole: written into a temporary folder renamed to `path` at the end, or,
    for a `path` on an object store, written in scratch and uploaded with its config.json last.
    """
    with store.writing_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        processor.tokenizer.save_pretrained(tmp)
        if meta is not None:
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
    return path


def _safetensors_whole(path: str) -> bool:
    """The file holds its header and every tensor byte the header promises (a truncated copy does not)."""
    try:
        fs, p = resolve_fs(path)
        with fs.open_input_file(p) as f:  # random access: on an object store, two small range reads
            size = f.size()
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    return 8 + n + max(ends, default=0) == size


def checkpoint_complete(path: str) -> bool:
    """An HF checkpoint with its config and all of its safetensors weights, whole (whoever wrote it)."""
    if not store.is_file(store.join(path, "config.json")):
        return False
    index = store.join(path, "model.safetensors.index.json")
    if store.is_file(index):
        try:
            files = sorted(set(store.read_json(index)["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            return False
    else:
        files = ["model.safetensors"]
    return all(_safetensors_whole(store.join(path, name)) for name in files)


def read_meta(path: str) -> dict:
    return store.read_json(store.join(path, META_FILE), {})


def load_checkpoint(path: str, dtype: str | torch.dtype = "float32", device: str | None = "cpu"):
    """(model, processor) from a checkpoint directory; safetensors only, never pickle. `device=None` leaves
    the parameters where loading put them (ZeRO-3: partitioned by DeepSpeed)."""
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    path = store.stage_in(path)  # a checkpoint on an object store: this node's scratch copy
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(path)
    return (model if device is None else model.to(device)).eval(), processor
