"""Model re-assembly (paper 2.1): move a trained projector onto another LLM of the same architecture."""

from __future__ import annotations

import copy

from transformers import InternVLForConditionalGeneration, PreTrainedModel, PreTrainedTokenizerBase

from r1v_ray.config import ProjectorConfig
from r1v_ray.model.assemble import assemble, build_processor
from r1v_ray.model.tokenizer import ensure_image_tokens


class ReassemblyError(ValueError):
    pass


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
    src_text = source.config.text_config
    if src_text.hidden_size != llm.config.hidden_size:
        raise ReassemblyError(
            f"hidden sizes disagree: the projector outputs {src_text.hidden_size} (from {src_text.model_type}) "
            f"but the target LLM's hidden_size is {llm.config.hidden_size}; re-assembly needs an LLM of the "
            "same architecture and width (train a new projector with mlp_init for this LLM)"
        )
    if src_text.model_type != llm.config.model_type:
        raise ReassemblyError(
            f"architectures disagree: projector trained against {src_text.model_type!r}, target is "
            f"{llm.config.model_type!r}; the paper re-assembles onto an LLM of the same architecture"
        )
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
