"""A deterministic judge without network, behind the same interface as the OpenAI judge.

Text scores and the integration score come from the textual signals the paper
lists (section 2.3): causal connectives with presupposition triggers,
multiple-object references, co-occurring domain terms, and - lowering S_I -
plain what/where questions about one definite object. Correctness is the
rule-based `accuracy_reward`; revision re-generates with the known answer as a
hint through the rollout engine, falling back to the row's reference rationale.
"""

from __future__ import annotations

import re

from r1v_ray.engines.judge.base import Assessment, Judge, Regenerate, RevisionImpossible, Usage, image_clarity
from r1v_ray.prompts import row_choices
from r1v_ray.rewards import accuracy_reward, format_reward

_WORD = re.compile(r"[a-z]+")
VISUAL_REFERENCES = {
    "image",
    "picture",
    "figure",
    "diagram",
    "chart",
    "graph",
    "shown",
    "drawn",
    "plot",
    "photo",
    "color",
    "colour",
    "bar",
    "bars",
    "shape",
    "shapes",
    "polygon",
    "digits",
    "visible",
}
DOMAIN_TERMS = {
    "angle",
    "angles",
    "interior",
    "polygon",
    "degrees",
    "sum",
    "digit",
    "digits",
    "perimeter",
    "area",
    "ratio",
    "probability",
    "equation",
    "triangle",
    "pentagon",
    "hexagon",
    "quadrilateral",
    "velocity",
    "force",
    "molecule",
    "cell",
    "integral",
    "derivative",
    "function",
    "tallest",
    "median",
    "mean",
}
CAUSAL = {"why", "how", "because", "explain", "therefore", "cause", "causes"}
PRESUPPOSITION = {"again", "still", "other", "remaining", "missing", "another", "also", "left", "rest"}
MULTI_OBJECT = {
    "shapes",
    "bars",
    "digits",
    "objects",
    "sides",
    "angles",
    "each",
    "all",
    "between",
    "both",
    "among",
    "compare",
    "tallest",
    "most",
    "many",
    "total",
}
MULTI_HOP = {"how many", "sum", "total", "missing", "tallest", "if", "then", "each", "compare", "difference", "most"}
PLAIN_INTERROGATIVE = re.compile(r"^\s*(what|where|which)\s+(is|are)?\s*(the|this|that)?\b")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _clip(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 6)


def text_signals(question: str) -> Assessment:
    """QDAM text scores and the VTIA integration score from textual patterns, each in [0, 1]."""
    words = _words(question)
    wordset = set(words)
    lower = question.lower()
    visual = len(wordset & VISUAL_REFERENCES)
    domain = len(wordset & DOMAIN_TERMS)
    hops = sum(1 for marker in MULTI_HOP if marker in lower)
    quality = (
        0.4 * question.strip().endswith("?")
        + 0.2 * question.strip()[:1].isupper()
        + 0.2 * (4 <= len(words) <= 80)
        + 0.2 * all(a != b for a, b in zip(words, words[1:]))
    )
    plain = bool(PLAIN_INTERROGATIVE.match(lower)) and len(wordset & MULTI_OBJECT) == 0
    integration = (
        0.3 * bool(wordset & CAUSAL)
        + 0.15 * bool(wordset & PRESUPPOSITION)
        + min(0.4, 0.2 * len(wordset & MULTI_OBJECT))
        + 0.2 * (domain >= 2)
        - 0.3 * plain
        + 0.1
    )
    return Assessment(
        image_necessity=_clip(0.2 + 0.2 * visual),
        question_quality=_clip(quality),
        difficulty=_clip(0.1 + 0.2 * domain + 0.1 * bool(re.search(r"\d", question))),
        reasoning_demand=_clip(0.1 + 0.2 * hops),
        integration=_clip(integration),
    )


_FACT = re.compile(r"[a-z]+|\d+")  # words and numbers: what a chain states about the image


def _facts(text: str) -> set[str]:
    return set(_FACT.findall(text.lower()))


_STOP = {"the", "a", "an", "is", "of", "in", "what", "which", "how", "so", "and", "its", "it", "are", "there"}


def _distinct_trigram_ratio(text: str) -> float:
    words = _words(text)
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else 0.0


GROUNDED = 0.75  # the share of the reference's facts a grounded chain states


class OfflineJudge(Judge):
    name = "offline"
    uses_regeneration = True  # revise() reads a hinted re-generation; the stage batches them

    def assess(self, row: dict) -> tuple[Assessment, Usage]:
        return text_signals(str(row["question"])), Usage(calls=1)

    def verify(self, row: dict, completion: str) -> tuple[bool, Usage]:
        return accuracy_reward(completion, str(row["answer"]), row_choices(row)) == 1.0, Usage(calls=1)

    def revise(self, row: dict, completion: str, regenerate: Regenerate | None) -> tuple[str, Usage]:
        usage = Usage(calls=1)
        answer = str(row["answer"])
        if regenerate is not None:
            hinted = regenerate(row)
            if accuracy_reward(hinted, answer, row_choices(row)) == 1.0 and format_reward(hinted) == 1.0:
                return hinted, usage
        if row.get("rationale"):
            return f"<think>\n{row['rationale']}\n</think>\n\nAnswer: \\boxed{{{answer}}}", usage
        raise RevisionImpossible(
            "offline judge cannot revise: the hinted re-generation missed the answer "
            "and the row has no reference rationale"
        )

    def rm_score(self, row: dict) -> tuple[int, str, Usage]:
        """Five rubric points on the chain's quality: correct (the right answer, well-formed), fluent
        (non-degenerate), grounded (at least three quarters of the reference rationale's facts: its words
        that are not the question's), faithful (all of them), clear image. Without a reference rationale,
        grounded and faithful ask for a word of the question. A chain the judge replaced by the reference
        scores 5; one the model wrote scores by how much of what it says about the image is so.

        Grounded at half the facts told almost nothing apart: the demo's distilled chains state 60-100% of
        them on one host, where every row scored 4 or 5 (on another, 8 of 512 scored lower)."""
        think = row.get("think") or row.get("rationale") or ""
        response = row.get("response") or f"Answer: \\boxed{{{row['answer']}}}"
        completion = f"<think>\n{think}\n</think>\n\n{response}"
        question = _facts(str(row["question"]))
        said = _facts(think)
        facts = _facts(str(row.get("rationale") or "")) - question - _STOP
        found = len(facts & said) / len(facts) if facts else float(bool((question - _STOP) & said))
        points = {
            "correct": accuracy_reward(response, str(row["answer"]), row_choices(row)) == 1.0
            and format_reward(completion) == 1.0
            and bool(think.strip()),
            "fluent": len(_words(think)) >= 5 and _distinct_trigram_ratio(think) >= 0.5,
            "grounded": found >= GROUNDED,
            "faithful": found >= 1.0,
            "clear_image": image_clarity(row["image"]) >= 0.2,
        }
        missing = [k for k, ok in points.items() if not ok]
        return (
            sum(points.values()),
            ("all rubric points" if not missing else "missing: " + ", ".join(missing)),
            Usage(calls=1),
        )
