"""SFT samples: chat rendering with assistant-only labels, padding-free packing, and the padded baseline.

A sample is one canonical row rendered as [user: image + question + paper
prompt, assistant: <think>reasoning</think> answer]. Only assistant tokens carry
labels. Packing concatenates whole samples into one row with per-sample
position ids; transformers derives a block-diagonal causal mask from them, so
samples never attend to each other and no compute is spent on padding. Images
stay whole with their tokens: a sample is never cut.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from r1v_ray.data.images import decode_rgb
from r1v_ray.data.validate import RowError
from r1v_ray.model.tokenizer import assistant_text
from r1v_ray.prompts import user_turn

IGNORE = -100


def sft_messages(row: dict) -> list[dict]:
    """The training conversation for a row: distilled think/response when present, else rationale + answer."""
    think = row.get("think") or row.get("rationale")
    response = row.get("response") or f"Answer: \\boxed{{{row['answer']}}}"
    return [user_turn(row), {"role": "assistant", "content": assistant_text(think, response)}]


def encode_sample(row: dict, processor, max_length: int) -> dict:
    """input_ids, labels (assistant tokens only), pixel_values and id; RowError if longer than max_length."""
    messages = sft_messages(row)
    image = decode_rgb(row["image"])
    full_text = processor.apply_chat_template(messages, tokenize=False)
    prompt_text = processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    if not full_text.startswith(prompt_text):
        raise RowError("chat template does not render the prompt as a prefix of the conversation")
    enc = processor(text=[full_text], images=[image], return_tensors="np")
    ids = enc["input_ids"][0].tolist()
    if len(ids) > max_length:
        raise RowError(
            f"too long: {len(ids)} tokens > sft.max_length {max_length} (not truncated through image tokens)"
        )
    n_prompt = len(processor(text=[prompt_text], images=[image], return_tensors="np")["input_ids"][0])
    labels = [IGNORE] * n_prompt + ids[n_prompt:]
    eos = processor.tokenizer.eos_token_id
    if eos in ids[n_prompt:]:  # the template's newline after the final <|im_end|> is not a target
        last = len(ids) - 1 - ids[::-1].index(eos)
        labels[last + 1 :] = [IGNORE] * (len(ids) - last - 1)
    return {"id": str(row["id"]), "input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"]}


def bins(samples: list[dict], capacity: int) -> list[list[dict]]:
    """First-fit-decreasing bin packing of whole samples into rows of at most `capacity` tokens."""
    rows: list[list[dict]] = []
    room: list[int] = []
    for s in sorted(samples, key=lambda s: -len(s["input_ids"])):
        n = len(s["input_ids"])
        slot = next((i for i, r in enumerate(room) if r >= n), None)
        if slot is None:
            rows.append([s])
            room.append(capacity - n)
        else:
            rows[slot].append(s)
            room[slot] -= n
    return rows


def pack(samples: list[dict], capacity: int | None = None, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Padding-free rows: samples concatenated (into bins of `capacity` tokens when given), positions
    restarting per sample, images in row-major order. Bin tails are filled with pad tokens whose
    positions restart too, so they form their own masked-out block."""
    packed = bins(samples, capacity) if capacity else [samples]
    width = max(sum(len(s["input_ids"]) for s in row) for row in packed)
    ids, labels, positions, pixels = [], [], [], []
    for row in packed:
        r_ids, r_labels, r_pos = [], [], []
        for s in row:
            r_ids += s["input_ids"]
            # The first token of a sample is never predicted from the previous sample's last token.
            r_labels += [IGNORE] + s["labels"][1:]
            r_pos += list(range(len(s["input_ids"])))
            pixels.append(s["pixel_values"])
        tail = width - len(r_ids)
        ids.append(r_ids + [pad_id] * tail)
        labels.append(r_labels + [IGNORE] * tail)
        positions.append(r_pos + list(range(tail)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
        "pixel_values": torch.from_numpy(np.concatenate(pixels)),
    }


def pad_collate(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The plain HF-style baseline: right-padded to the longest sample, with an attention mask."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": torch.from_numpy(np.concatenate([s["pixel_values"] for s in samples])),
    }


def labelled_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits [B, K, V] at the K positions whose next token is labelled (in any row), and those next
    tokens [B, K] (IGNORE where a row has none). The LM head and softmax never see prompt positions: at a
    150k vocabulary the full-row logits are the largest activation of a step."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    target = batch["labels"][:, 1:]
    keep = (target != IGNORE).any(0).nonzero().squeeze(1)
    if keep.numel() == 0:  # nothing labelled: keep every position so the graph (and its zero loss) stays whole
        keep = torch.arange(target.shape[1])
    keep = keep.to(batch["input_ids"].device)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
    return logits, target[:, keep].to(logits.device)


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and their count (callers normalize globally)."""
    logits, target = labelled_logits(model, batch)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((target != IGNORE).sum())


def sample_tokens(row: dict, processor, prompt_builder) -> int:
    """Length of a row's full training conversation in tokens, images included, without pixel work."""
    text = processor.apply_chat_template(sft_messages(row), tokenize=False)
    with Image.open(io.BytesIO(row["image"])) as image:  # header only: the size is all the count needs
        return prompt_builder.count_tokens(text, [image])
