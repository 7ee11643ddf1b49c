"""R1V = vision encoder ∘ MLP projector ∘ LLM, in the HF `InternVLForConditionalGeneration` layout.

A checkpoint saved here (safetensors, processor, tokenizer, chat template) loads
unchanged in transformers (`AutoModelForImageTextToText`) and in `vllm.LLM`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
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
from r1v_ray.model.safetensors_io import DEFAULT_SHARD_BYTES, ShardedWriter, TensorRef, checkpoint_tensors, load_tensor
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


def _write_extras(processor: InternVLProcessor | None, tmp: str, meta: dict | None) -> None:
    if processor is not None:  # None: a bare part (an LLM, a vision encoder) written by its maker
        processor.save_pretrained(tmp)
        processor.tokenizer.save_pretrained(tmp)
    if meta is not None:
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def save_checkpoint(model: PreTrainedModel, processor: InternVLProcessor, path: str, meta: dict | None = None) -> str:
    """Weights as safetensors plus processor, tokenizer and chat template: a standard HF checkpoint.

    A checkpoint folder is always whole: written into a temporary folder renamed to `path` at the end, or,
    for a `path` on an object store, written in scratch and uploaded with its config.json last.
    """
    with store.writing_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _write_extras(processor, tmp, meta)
    return path


def saved_keys(model: PreTrainedModel) -> dict[str, str]:
    """Parameter / persistent buffer name -> the key `save_pretrained` writes it under (InternVL saves the
    legacy layout, `language_model.model.*`), tied copies left out, in state-dict order."""
    from transformers.core_model_loading import revert_weight_conversion

    tied = set(getattr(model, "all_tied_weights_keys", None) or {})  # targets of active ties
    ignored = set(model._keys_to_ignore_on_save or ())
    seen, markers = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen or name in tied or name in ignored:
            continue
        seen.add(id(tensor))
        markers[name] = torch.empty(0, device="meta")  # one marker each: renaming keeps the objects
    owner = {id(t): name for name, t in markers.items()}
    keys = {}
    for key, t in revert_weight_conversion(model, markers).items():
        if id(t) not in owner:
            raise NotImplementedError(f"{type(model).__name__} converts weights on save ({key}); not streamable")
        keys[owner[id(t)]] = key
    return {name: keys[name] for name in markers}


def _write_config(model: PreTrainedModel, dtype: torch.dtype, tmp: str) -> None:
    """config.json and generation_config.json exactly as `save_pretrained` writes them."""
    model.config.dtype = str(dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp)
    if model.can_generate():
        model.generation_config.save_pretrained(tmp)


@contextlib.contextmanager
def streamed_checkpoint(
    model: PreTrainedModel,
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    processor: InternVLProcessor | None,
    path: str,
    meta: dict | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Iterator[Callable[[str, torch.Tensor], None]]:
    """Yield `write(name, tensor)`: each tensor goes to its safetensors shard as it is given.

    `model` gives the names, config and layout (it may live on the meta device or be ZeRO-3 partitioned);
    `specs` gives each tensor's dtype and full shape. The folder appears whole at `path` at the end, and
    not at all if a declared tensor never came.
    """
    keys = saved_keys(model)
    if set(keys) - set(specs):
        raise ValueError(f"no dtype/shape given for {sorted(set(keys) - set(specs))[:3]}")
    with store.writing_dir(path) as tmp:  # local: atomic rename; object store: uploaded, config.json last
        writer = ShardedWriter(tmp, [(keys[n], *specs[n]) for n in keys], max_shard_bytes)
        try:
            yield lambda name, tensor: writer.write(keys[name], tensor)
        except BaseException:
            writer.close(check=False)
            raise
        writer.close()
        floating = [specs[n][0] for n in keys if specs[n][0].is_floating_point]
        _write_config(model, floating[0] if floating else torch.float32, tmp)
        _write_extras(processor, tmp, meta)


def meta_skeleton(config, model_cls=None) -> PreTrainedModel:
    """The model for `config` with every tensor on the meta device: names, shapes and layout, no memory."""
    with torch.device("meta"):
        if model_cls is not None:
            return model_cls(config)
        auto = AutoModelForCausalLM if getattr(config, "text_config", None) is None else AutoModel
        return (AutoModel if config.model_type == "internvl_vision" else auto).from_config(config)


def part_refs(path: str, skeleton: PreTrainedModel) -> dict[str, TensorRef]:
    """Where each of the skeleton's tensors (by name) lies in the checkpoint at `path`."""
    refs = checkpoint_tensors(path)
    out = {}
    for name, key in saved_keys(skeleton).items():
        if key not in refs:
            raise ValueError(f"{path}: no tensor {key!r} (for {name}); is it a {type(skeleton).__name__} checkpoint?")
        out[name] = refs[key]
    return out


def vision_refs(path: str):
    """(vision config, tensors by vision-tower name) of an InternViT: bare, or inside an InternVL checkpoint."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "internvl":
        prefix = "model.vision_tower."
        refs = part_refs(path, meta_skeleton(config, InternVLForConditionalGeneration))
        return config.vision_config, {n[len(prefix) :]: r for n, r in refs.items() if n.startswith(prefix)}
    if config.model_type != "internvl_vision":
        raise ValueError(f"{path}: model_type {config.model_type!r} is not an InternVL vision encoder")
    return config, part_refs(path, meta_skeleton(config))


def llm_refs(path: str):
    """(text config, tensors under their InternVL names) of a causal LLM checkpoint."""
    config = AutoConfig.from_pretrained(path)
    refs = {}
    for name, ref in part_refs(path, meta_skeleton(config)).items():
        if name.startswith("model."):
            refs["model.language_model." + name[len("model.") :]] = ref
        elif name.startswith("lm_head."):
            refs[name] = ref
        else:
            raise ValueError(f"{path}: tensor {name!r} is neither the decoder (model.*) nor lm_head")
    return config, refs


Source = TensorRef | torch.Tensor


def stream_model(
    skeleton: PreTrainedModel,
    sources: dict[str, Source],
    dtypes: dict[str, torch.dtype],
    processor: InternVLProcessor,
    path: str,
    meta: dict | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> str:
    """Write the checkpoint of `skeleton` (meta device) taking each tensor from its source, one at a time."""
    keys = saved_keys(skeleton)
    missing = [n for n in keys if n not in sources]
    if missing:
        raise RuntimeError(f"assembly left tensors without weights: {missing[:5]}")
    specs = {}
    for name in keys:
        shape, want = tuple(sources[name].shape), tuple(skeleton.get_parameter_or_buffer(name).shape)
        if shape != want:
            raise ValueError(f"{name}: the part holds shape {shape}, the assembled model needs {want}")
        specs[name] = (dtypes[name], shape)
    with streamed_checkpoint(skeleton, specs, processor, path, meta, max_shard_bytes) as write:
        for name in keys:
            src = sources[name]
            write(name, load_tensor(src, dtypes[name]) if isinstance(src, TensorRef) else src.to(dtypes[name]))
    return path


def assemble_from_parts(
    vision_path: str,
    llm_path: str,
    out: str,
    projector: ProjectorConfig | None = None,
    max_tiles: int = 12,
    seed: int = 0,
    meta: dict | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> str:
    """`assemble` from checkpoints on disk, never holding a part whole: the model is laid out on the meta
    device and each weight goes from its part's safetensors to the output shard, in `dtype` (None: as stored;
    the fresh projector takes the LLM's)."""
    projector = projector or ProjectorConfig()
    vision_path, llm_path = store.stage_in(vision_path), store.stage_in(llm_path)  # URIs: node-local copies
    vision_config, v_refs = vision_refs(vision_path)
    text_config, l_refs = llm_refs(llm_path)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    if text_config.vocab_size < len(tokenizer):
        raise ValueError(
            f"the LLM has {text_config.vocab_size} embeddings but the tokenizer has "
            f"{len(tokenizer)} tokens; resize the LLM's embeddings (re-assembly does this)"
        )
    config = r1v_config(vision_config, text_config, tokenizer, projector)
    torch_dtype = DTYPES[dtype] if dtype else None
    llm_dtype = torch_dtype or next(iter(l_refs.values())).dtype
    sources: dict[str, Source] = {"model.vision_tower." + n: r for n, r in v_refs.items()} | l_refs
    proj = {"model.multi_modal_projector." + n: t for n, t in new_projector(config, seed).state_dict().items()}
    dtypes = {n: torch_dtype or r.dtype for n, r in sources.items()} | dict.fromkeys(proj, llm_dtype)
    skeleton = meta_skeleton(config, InternVLForConditionalGeneration)
    skeleton.generation_config.eos_token_id = tokenizer.eos_token_id
    skeleton.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, config.vision_config, projector.downsample_ratio, max_tiles)
    return stream_model(skeleton, sources | proj, dtypes, processor, out, meta, max_shard_bytes)


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
