"""Server-sent events for streamed chat completions, and the R1-style reasoning split they share
with whole responses.

A completion that opens with `<think>` is reasoning up to `</think>` (`reasoning_content`), and
the rest is the answer (`content`); one that does not open with it is all answer. The split runs
incrementally, so a stream's pieces concatenate to exactly what the whole response holds.
"""

from __future__ import annotations

import json
import time

from r1v_ray.engines.rollout.types import CompletionDelta
from r1v_ray.model.tokenizer import THINK_CLOSE, THINK_OPEN


def _tag_prefix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (a tag split across deltas)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """Feeds text pieces in, gets (field, text) pieces out; field is `reasoning_content` or `content`.
    Whitespace around the reasoning and before the answer is dropped."""

    def __init__(self):
        self.state = "start"  # start -> reasoning -> gap -> content, or start -> content
        self.buf = ""
        self.opened = False  # the text opened with <think>
        self.reasoned = False  # some reasoning was given out

    def feed(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            before = (self.state, self.buf)
            getattr(self, f"_{self.state}")(out, final)
            if (self.state, self.buf) == before:
                return [(f, t) for f, t in out if t]

    def _start(self, out, final):
        head = self.buf.lstrip()
        if head.startswith(THINK_OPEN):
            self.state, self.buf, self.opened = "reasoning", head[len(THINK_OPEN) :], True
        elif final or not THINK_OPEN.startswith(head) or not head:
            if head or final:  # text that does not open with <think> is all answer, as it came
                self.state = "content"

    def _reasoning(self, out, final):
        if not self.reasoned:
            self.buf = self.buf.lstrip()  # whitespace after <think> (it may come in a later piece)
        if THINK_CLOSE in self.buf:
            head, _, tail = self.buf.partition(THINK_CLOSE)
            out.append(("reasoning_content", head.rstrip()))
            self.state, self.buf = "gap", tail
            return
        if final:
            out.append(("reasoning_content", self.buf.rstrip()))
            self.buf = ""
            return
        # Hold back a possible partial </think> and trailing whitespace (dropped if the reasoning ends there).
        ready = self.buf[: len(self.buf) - _tag_prefix_len(self.buf, THINK_CLOSE)].rstrip()
        if ready:
            self.reasoned = True
            out.append(("reasoning_content", ready))
            self.buf = self.buf[len(ready) :]

    def _gap(self, out, final):
        self.buf = self.buf.lstrip()
        if self.buf:
            self.state = "content"

    def _content(self, out, final):
        if self.buf:
            out.append(("content", self.buf))
            self.buf = ""


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole completion; reasoning is None when it does not open with <think>."""
    splitter = ReasoningSplitter()
    pieces = splitter.feed(text, final=True)
    if not splitter.opened:
        return None, "".join(t for _, t in pieces)
    return (
        "".join(t for f, t in pieces if f == "reasoning_content"),
        "".join(t for f, t in pieces if f == "content"),
    )


class ChatStream:
    """The chat.completion.chunk events of one request: a role chunk per choice, its pieces as they
    come, a finish chunk per choice, then (stream_options.include_usage) a usage chunk, then [DONE]."""

    def __init__(self, model: str, request_id: str, prompt_tokens: int, include_usage: bool):
        self.model, self.request_id, self.prompt_tokens = model, request_id, prompt_tokens
        self.include_usage = include_usage
        self.created = int(time.time())
        self.splitters: dict[int, ReasoningSplitter] = {}
        self.completion_tokens = 0

    def _chunk(self, choices: list[dict], **extra) -> str:
        chunk = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    def _event(self, index: int, delta: dict, finish: str | None = None) -> str:
        return self._chunk([{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}])

    def events(self, deltas: list[CompletionDelta]) -> list[str]:
        events = []
        for d in deltas:
            if d.index not in self.splitters:
                self.splitters[d.index] = ReasoningSplitter()
                events.append(self._event(d.index, {"role": "assistant", "content": ""}))
            self.completion_tokens += len(d.token_ids)
            final = d.finish_reason is not None
            for field, text in self.splitters[d.index].feed(d.text, final=final):
                events.append(self._event(d.index, {field: text}))
            if final:
                events.append(self._event(d.index, {}, d.finish_reason))
        return events

    def end(self) -> list[str]:
        events = []
        if self.include_usage:
            total = self.prompt_tokens + self.completion_tokens
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": total,
            }
            events.append(self._chunk([], usage=usage))
        events.append("data: [DONE]\n\n")
        return events
