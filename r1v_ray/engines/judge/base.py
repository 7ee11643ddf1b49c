"""The judge interface: QDAM / VTIA assessment, answer verification, revision and RM scoring.

Two judges implement it: `OpenAIJudge` (GPT-4o or any OpenAI-compatible server)
and `OfflineJudge` (deterministic, no network; the demo and tests). Every call
returns its `Usage` next to its value, so a stage can count calls, cache hits,
retries, tokens and cost per row however many threads share one judge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

from r1v_ray.data.images import decode_rgb


class JudgeError(RuntimeError):
    """A judge call that failed for good (retries exhausted, unusable answer); the row is rejected.

    `usage` is what the failed call still cost (calls, retries, tokens): a rejected row is paid for too.
    """

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage if usage is not None else Usage()


class RevisionImpossible(JudgeError):
    """The judge worked, but this row's answer cannot be reached by a revision: a row outcome, not an outage."""


@dataclass
class Usage:
    calls: int = 0  # requests that reached the judge (each retry is a call)
    cache_hits: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    failures: int = 0  # rows the judge failed on (counted by the stage's judge pool, not by the judge)

    def __iadd__(self, other: Usage) -> Usage:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self, prefix: str = "judge_") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


@dataclass
class Assessment:
    """QDAM and VTIA scores of one query, each in [0, 1] (higher: clearer, harder, more integrated)."""

    image_necessity: float
    question_quality: float
    difficulty: float
    reasoning_demand: float
    integration: float

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
                raise JudgeError(f"assessment field {f.name}={value!r} is not a score in [0, 1]")


# A completion the rollout engine generated for the row with the known answer as a hint.
Regenerate = Callable[[dict], str]


class Judge(ABC):
    """What the distillation and scoring stages ask of a judge. All methods are thread-safe."""

    name: str = "judge"
    uses_regeneration: bool = False  # True: revise() calls `regenerate` (the stage then batches those generations)

    @abstractmethod
    def assess(self, row: dict) -> tuple[Assessment, Usage]:
        """QDAM (image necessity, question quality, difficulty, reasoning demand) and VTIA (integration)."""

    @abstractmethod
    def verify(self, row: dict, completion: str) -> tuple[bool, Usage]:
        """Is the completion's final answer the row's ground truth?"""

    @abstractmethod
    def revise(self, row: dict, completion: str, regenerate: Regenerate | None) -> tuple[str, Usage]:
        """A completion `<think>...</think> answer` whose reasoning leads to the ground truth.

        Raises JudgeError when no revision reaching the answer can be made.
        """

    @abstractmethod
    def rm_score(self, row: dict) -> tuple[int, str, Usage]:
        """RM(x) in {0..5} with a one-line reason (paper 2.2): the quality of the sample as SFT data."""


# --------------------------------------------------------------------------- local measurements


def image_clarity(image_bytes: bytes) -> float:
    """Image clarity in [0, 1] from blur and resolution, computed locally (paper: not by GPT-4o).

    Sharpness is the variance of the Laplacian of the grey image (low for blurred
    images), on a log scale saturating at 1000; resolution saturates at 448 px,
    the vision encoder's tile size. Clarity is their mean.
    """
    grey = np.asarray(decode_rgb(image_bytes).convert("L"), dtype=np.float64)
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    sharpness = min(1.0, math.log1p(float(lap.var())) / math.log1p(1000.0))
    resolution = min(1.0, math.sqrt(grey.shape[0] * grey.shape[1]) / 448.0)
    return round(0.5 * sharpness + 0.5 * resolution, 6)


def split_think(completion: str) -> tuple[str, str]:
    """(think, response) of a completion; an unclosed or missing think block gives think ''."""
    text = completion.strip()
    if "</think>" not in text:
        return "", text.replace("<think>", "").strip()
    think, response = text.rsplit("</think>", 1)
    return think.replace("<think>", "").strip(), response.strip()
