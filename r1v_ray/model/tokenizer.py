"""Tokenizers: in-process byte-level BPE training, image tokens, and the R1-style chat template."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Named image tokens the HF InternVL processor (and vLLM's InternVL) read from the tokenizer.
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# ChatML with InternVL image placeholders. R1 convention: earlier assistant turns
# drop their reasoning (only the text after </think> stays in the history); the
# turn being trained or generated keeps it. Image parts become <IMG_CONTEXT>,
# which the processor expands to <img><IMG_CONTEXT>*N</img>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] -%}"
    "{%- else -%}"
    "{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}{%- set ns.text = ns.text + '<IMG_CONTEXT>\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set text = ns.text -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' and not loop.last and '</think>' in text -%}"
    "{%- set text = text.split('</think>')[-1].lstrip() -%}"
    "{%- endif -%}"
    "{{- text + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_bpe_tokenizer(
    corpus: Iterable[str], vocab_size: int, with_image_tokens: bool = True
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here, with chat, think and (optionally) image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [PAD, BOS, EOS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=1 << 20,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    # <think> stays a normal (non-special) added token: decoding with skip_special_tokens keeps it.
    fast.add_tokens([THINK_OPEN, THINK_CLOSE])
    fast.add_special_tokens({"additional_special_tokens": [BOS]}, replace_extra_special_tokens=False)
    if with_image_tokens:
        ensure_image_tokens(fast)
    return fast


def has_image_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    return all(getattr(tokenizer, name, None) == tok for name, tok in IMAGE_TOKENS.items())


def ensure_image_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the InternVL image tokens (as named special tokens) when missing; returns how many were new."""
    before = len(tokenizer)
    missing = [t for t in IMAGE_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer._set_model_specific_special_tokens(special_tokens=dict(IMAGE_TOKENS))
    init = tokenizer.init_kwargs.setdefault("extra_special_tokens", {})
    if isinstance(init, dict):
        init.update(IMAGE_TOKENS)
    else:
        tokenizer.init_kwargs["extra_special_tokens"] = dict(IMAGE_TOKENS)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return len(tokenizer) - before


def assistant_text(think: str | None, response: str) -> str:
    """The assistant turn as R1-style models write it."""
    if think is None:
        return response
    return f"{THINK_OPEN}\n{think.strip()}\n{THINK_CLOSE}\n\n{response.strip()}"
