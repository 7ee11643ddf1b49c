"""Model parts: load real ones from paths, or build tiny ones here (tests and the demo).

Tiny parts are written to disk as ordinary HF checkpoints and then loaded by
the same `load_*` functions real checkpoints go through: there is one path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    InternVLVisionModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from r1v_ray import store
from r1v_ray.config import ModelConfig, TinyModelConfig
from r1v_ray.model.tokenizer import train_bpe_tokenizer
from r1v_ray.run_dir import RunLayout

Corpus = Callable[..., Iterable[str]]  # corpus(n, seed=...): task text for tokenizers


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def tiny_vision_config(t: TinyModelConfig) -> InternVLVisionConfig:
    return InternVLVisionConfig(
        hidden_size=t.vision_hidden,
        num_hidden_layers=t.vision_layers,
        num_attention_heads=t.vision_heads,
        intermediate_size=2 * t.vision_hidden,
        image_size=t.image_size,
        patch_size=t.patch_size,
    )


def tiny_text_config(t: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    if t.text_hidden // t.text_heads < 32:
        raise ValueError(
            f"model.tiny: head_dim = text_hidden/text_heads = {t.text_hidden // t.text_heads}; vLLM on CPU needs >= 32"
        )
    return Qwen2Config(
        vocab_size=_round_up(len(tokenizer)),
        hidden_size=t.text_hidden,
        intermediate_size=t.text_intermediate,
        num_hidden_layers=t.text_layers,
        num_attention_heads=t.text_heads,
        num_key_value_heads=t.text_kv_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def _tiny_llm(t: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_text_config(t, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


@dataclass
class PartPaths:
    vision: str
    substitute_llm: str
    reasoning_llm: str


def write_tiny_parts(t: TinyModelConfig, out_dir: str, corpus: Corpus) -> PartPaths:
    """Build and save a tiny vision encoder and two tiny Qwen2 LLMs of one architecture.

    The substitute LLM's tokenizer has the image tokens; the reasoning LLM's
    tokenizer is trained on other text, with another vocabulary and without
    image tokens, as a real reasoning LLM's would be: re-assembly must add them.
    `out_dir` is the parts' own folder: it is replaced, whole, once all three are written. `corpus(n, seed=)`
    yields the task text the tokenizers train on (the model layer does not import the data layer).
    """
    names = ("vision", "substitute_llm", "reasoning_llm")
    with store.writing_dir(out_dir) as tmp:  # the parts appear together, each whole, or not at all
        staged = PartPaths(*(os.path.join(tmp, n) for n in names))
        torch.manual_seed(t.seed)
        vision = InternVLVisionModel(tiny_vision_config(t)).eval()
        vision.save_pretrained(staged.vision, safe_serialization=True)

        sub_tok = train_bpe_tokenizer(corpus(400, seed=t.seed), t.vocab_size, with_image_tokens=True)
        _tiny_llm(t, sub_tok, seed=t.seed + 1).save_pretrained(staged.substitute_llm, safe_serialization=True)
        sub_tok.save_pretrained(staged.substitute_llm)

        reason_tok = train_bpe_tokenizer(corpus(300, seed=t.seed + 7), t.vocab_size - 64, with_image_tokens=False)
        _tiny_llm(t, reason_tok, seed=t.seed + 2).save_pretrained(staged.reasoning_llm, safe_serialization=True)
        reason_tok.save_pretrained(staged.reasoning_llm)
    return PartPaths(*(store.join(out_dir, n) for n in names))


def part_paths(cfg: ModelConfig, work_dir: str, corpus: Corpus | None = None, task=None) -> PartPaths:
    """Where the parts are: built under `work_dir` for source=tiny (once, tokenizers trained on `corpus`), in
    the zoo's cache for source=zoo (once per configuration, trained on `task`: an object with `make_row`,
    `corpus` and `SCENE_WORDS`, such as `r1v_ray.data.synthetic`), else the configured paths."""
    from r1v_ray.model.assemble import checkpoint_complete

    if cfg.source == "zoo":
        from r1v_ray.model.zoo import zoo_parts

        if task is None:
            raise ValueError("model.source=zoo trains its parts on a task: pass task= (r1v_ray.data.synthetic)")
        return PartPaths(*zoo_parts(cfg.tiny, cfg.zoo, task))
    if cfg.source == "tiny" and corpus is None:
        raise ValueError("model.source=tiny builds its parts: pass corpus= (r1v_ray.data.synthetic.corpus)")
    if cfg.source == "tiny":
        out = RunLayout(work_dir).tiny_parts()
        paths = PartPaths(*(store.join(out, n) for n in ("vision", "substitute_llm", "reasoning_llm")))
        if not all(checkpoint_complete(p) for p in vars(paths).values()):
            paths = write_tiny_parts(cfg.tiny, out, corpus)
        return paths
    missing = [k for k in ("vision_path", "llm_path", "substitute_llm_path") if getattr(cfg, k) is None]
    if missing:
        raise ValueError(f"model.source=pretrained needs {', '.join('model.' + m for m in missing)}")
    return PartPaths(cfg.vision_path, cfg.substitute_llm_path, cfg.llm_path)


def load_vision(path: str, dtype: torch.dtype = torch.float32) -> InternVLVisionModel:
    """An InternViT in HF layout: a bare vision model, or the vision tower of an HF InternVL checkpoint."""
    path = store.stage_in(path)  # on an object store: this node's scratch copy
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "internvl":
        full = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype, use_safetensors=True)
        return full.model.vision_tower.eval()
    if config.model_type != "internvl_vision":
        raise ValueError(f"{path}: model_type {config.model_type!r} is not an InternVL vision encoder")
    return AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()


def load_llm(path: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = store.stage_in(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def assemble_initial(
    cfg: ModelConfig, work_dir: str, out: str, seed: int = 0, corpus: Corpus | None = None, task=None
) -> str:
    """The MLP-initialization starting point (paper 2.1): vision encoder + fresh projector + substitute LLM."""
    from r1v_ray.model.assemble import assemble_from_parts, checkpoint_complete

    if checkpoint_complete(out):
        return out
    parts = part_paths(cfg, work_dir, corpus, task)
    meta = {"stage": "assembled", "vision": parts.vision, "llm": parts.substitute_llm}
    return assemble_from_parts(parts.vision, parts.substitute_llm, out, cfg.projector, cfg.max_image_tiles, seed, meta)


def write_tiny_checkpoint(work: str, corpus: Corpus, sizes: TinyModelConfig | None = None, name: str = "ckpt") -> str:
    """A tiny R1V checkpoint at `work/name` (parts under `work/name-parts`): tiny vision encoder + substitute
    LLM + fresh projector, one tile per image. For benchmarks and hardware checks that need a model to run."""
    from r1v_ray.config import ProjectorConfig
    from r1v_ray.model.assemble import assemble, build_processor, save_checkpoint

    parts = write_tiny_parts(sizes or TinyModelConfig(), os.path.join(work, f"{name}-parts"), corpus)
    llm, tok = load_llm(parts.substitute_llm)
    projector = ProjectorConfig()
    model = assemble(load_vision(parts.vision), llm, tok, projector)
    processor = build_processor(tok, model.config.vision_config, projector.downsample_ratio, 1)
    return save_checkpoint(model, processor, os.path.join(work, name))
