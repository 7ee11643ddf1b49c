"""What every stage asks a model: requests, the paper's prompt for a row, rendering with the chat template.

Requests carry OpenAI-style chat messages; image parts are `{"type": "image"}`
placeholders matched in order with `images`, or `image_url` parts holding
base64 data URLs. Sampling is per request.

Layers: engines (rollout, learner, judge) and the stages import this module; it
uses only `data` and `rewards` (the paper's prompt texts), never an engine.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field

from PIL import Image

from r1v_ray.data.images import ImageError, check_size, decode_rgb, to_rgb
from r1v_ray.rewards import MULTI_CHOICE_PROMPT, OPEN_PROMPT, OPTION_LETTERS


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    repetition_penalty: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: bool = False  # the sampled tokens' log-probs (raw model distribution)


@dataclass
class GenerationRequest:
    messages: list[dict]
    images: list = field(default_factory=list)  # encoded bytes or PIL images, for {"type": "image"} parts
    sampling: Sampling = field(default_factory=Sampling)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def row_choices(row: dict) -> list[str] | None:
    """A row's options as a list (Arrow and NumPy give arrays), or None for an open question."""
    value = row.get("choices")
    return list(value) if value is not None and len(value) else None


def format_choices(choices: list[str]) -> str:
    return "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices))


def build_question_text(question: str, choices: list[str] | None) -> str:
    """Question, options (A., B., ...) and the matching paper prompt (section 3)."""
    if choices:
        return f"{question}\n{format_choices(choices)}\n{MULTI_CHOICE_PROMPT}"
    return f"{question}\n{OPEN_PROMPT}"


def question_text(row: dict) -> str:
    """The text every stage sends for a canonical row: its question, options and the paper's prompt."""
    return build_question_text(str(row["question"]), row_choices(row))


def user_turn(row: dict, hint: str | None = None) -> dict:
    """A row's user message: its image, then `question_text` (and a revision hint: self-distillation's)."""
    text = question_text(row) + (f"\n\nHint: {hint}" if hint else "")
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def paper_request(
    row: dict,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    *,
    repetition_penalty: float = 1.0,
    hint: str | None = None,
) -> GenerationRequest:
    """The request every stage sends for a row (evaluation, GRPO, the SFT error set, self-distillation):
    `user_turn` with the row's image, sampled n times (n = k: eval's k independent runs; n = G: a GRPO group).
    The seed makes the n samples reproducible."""
    sampling = Sampling(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    request_id = str(row["id"]) + ("/hint" if hint else "")
    return GenerationRequest(
        messages=[user_turn(row, hint)], images=[row["image"]], sampling=sampling, request_id=request_id
    )


class RequestRejected(ValueError):
    """A request that cannot run (too long, bad image); the reason goes to `rejected`."""


def decode_image(value) -> Image.Image:
    if isinstance(value, Image.Image):
        try:
            check_size(value)
        except ImageError as exc:
            raise RequestRejected(str(exc)) from None
        return to_rgb(value)
    if isinstance(value, str):
        if not value.startswith("data:"):
            raise RequestRejected("remote image URLs are not fetched; send images as base64 data URLs")
        try:
            header, payload = value.split(",", 1)
            value = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            raise RequestRejected("malformed data URL for an image") from None
    if not isinstance(value, (bytes, bytearray)):
        raise RequestRejected(f"unsupported image type {type(value).__name__}")
    try:
        return decode_rgb(bytes(value))
    except ImageError as exc:
        raise RequestRejected(str(exc)) from None


def split_images(messages: list[dict], images: list) -> tuple[list[dict], list[Image.Image]]:
    """Template-ready messages (image parts become {"type": "image"}) and the images in order."""
    pending = list(images)
    out_msgs, out_imgs = [], []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str) or content is None:
            out_msgs.append({"role": msg["role"], "content": content or ""})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "image":
                src = part.get("image")
                if src is None:
                    if not pending:
                        raise RequestRejected("more image placeholders than images")
                    src = pending.pop(0)
                out_imgs.append(decode_image(src))
                parts.append({"type": "image"})
            elif kind == "image_url":
                url = part.get("image_url")
                out_imgs.append(decode_image(url.get("url") if isinstance(url, dict) else url))
                parts.append({"type": "image"})
            elif kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            else:
                raise RequestRejected(f"unsupported content part type {kind!r}")
        out_msgs.append({"role": msg["role"], "content": parts})
    if pending:
        raise RequestRejected(f"{len(pending)} image(s) without a placeholder in the messages")
    return out_msgs, out_imgs


def image_placeholder_ids(tokenizer) -> list[int]:
    """Token ids that must never be generated: a completion holding an image placeholder cannot be fed
    back with its image (the features/tokens count would not match)."""
    names = ("context_image_token", "start_image_token", "end_image_token", "video_token")
    return [tokenizer.convert_tokens_to_ids(t) for t in (getattr(tokenizer, n, None) for n in names) if t]


class PromptBuilder:
    """Renders prompts with the checkpoint's chat template and counts their tokens, images included."""

    def __init__(self, processor, max_model_len: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_model_len = max_model_len
        self.banned_ids = [[i] for i in image_placeholder_ids(self.tokenizer)]  # HF generate's bad_words_ids

    def render(self, request: GenerationRequest) -> tuple[str, list[Image.Image], int]:
        messages, images = split_images(request.messages, request.images)
        if messages and messages[-1]["role"] == "assistant":  # continue a partial assistant turn
            text = self.processor.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        else:
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        n_tokens = self.count_tokens(text, images)
        budget = self.max_model_len - request.sampling.max_tokens
        if n_tokens > budget:
            raise RequestRejected(
                f"prompt too long: {n_tokens} tokens (images included) + max_tokens {request.sampling.max_tokens} "
                f"> max_model_len {self.max_model_len}; prompts are never truncated through image tokens"
            )
        return text, images, n_tokens

    def count_tokens(self, text: str, images: list[Image.Image]) -> int:
        n_text = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not images:
            return n_text
        sizes = [(img.height, img.width) for img in images]
        mm = self.processor._get_num_multimodal_tokens(image_sizes=sizes)
        # Each <IMG_CONTEXT> placeholder expands to <img> + N context tokens + </img>.
        return n_text - len(images) + sum(mm.num_image_tokens)
