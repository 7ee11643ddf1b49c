"""Fuzz: the answer extractor Φ and the rule rewards take any model output, and every call ends within a deadline."""

from __future__ import annotations

import pytest
from fuzz_settings import examples
from hypothesis import given
from hypothesis import strategies as st

from r1v_ray import answer_check
from r1v_ray.rewards import accuracy_reward, extract_answer, format_reward

# Pieces models (and hostile completions) put around answers, mixed with arbitrary text.
TOKENS = [
    "\\boxed{", "\\boxed {", "\\fbox{", "{", "}", "\\text{", "\\textbf{", "\\mathrm{", "Answer:", "**Final Answer**:",
    "answer：", "\n", " ", "   ", "*", "$", "A", "b", "(C)", "Option D", "1", "42", "-3.5", "^", "_", "\\frac",
    "\\sqrt", "(", ")", "!", "\\", "%", "\\%", ".", "<think>", "</think>", "x", "=", "+", "9^{9}", "10^{",
]  # fmt: skip
latexish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=60).map("".join)
brace_free = st.text(st.characters(exclude_characters="{}", exclude_categories=("Cs",)), max_size=24)
choices = st.one_of(st.none(), st.lists(st.text(max_size=6), min_size=1, max_size=5))


@pytest.fixture(scope="module", autouse=True)
def short_check_deadline():
    """A fresh answer-check pool with a 2 s deadline, so a runaway expression costs little here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1V_ANSWER_CHECK_TIMEOUT_S", "2")
        old, answer_check._pool = answer_check._pool, None
        yield
        answer_check.pool().close()
        answer_check._pool = old


@examples(400, deadline_s=2)
@given(latexish)
def test_extract_answer_takes_any_text(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer == answer.strip())
    assert format_reward(text) in (0.0, 1.0)


@examples(300, deadline_s=2)
@given(latexish, brace_free)
def test_the_last_closed_box_wins(text, boxed):
    assert extract_answer(text + "\\boxed{" + boxed + "}") == boxed.strip()


@examples(150, deadline_s=30)
@given(st.one_of(latexish, latexish.map(lambda s: "\\boxed{" + s + "}")), latexish, choices)
def test_accuracy_reward_is_zero_or_one_within_its_deadline(completion, answer, options):
    assert accuracy_reward(completion, answer, options) in (0.0, 1.0)


@examples(150, deadline_s=30)
@given(brace_free)
def test_an_answer_matches_itself(answer):
    assert accuracy_reward("<think>t</think> Answer: \\boxed{" + answer + "}", answer) == 1.0
