"""Φ, accuracy and format rewards on realistic model outputs."""

import pytest

from r1v_ray.prompts import build_question_text
from r1v_ray.rewards import (
    MULTI_CHOICE_PROMPT,
    OPEN_PROMPT,
    accuracy_reward,
    extract_answer,
    format_reward,
)

R1_OUTPUT = """<think>
The pentagon has 5 sides, so the interior angles sum to (5-2)*180 = 540.
Known: 100 + 110 + 120 + 95 = 425, so x = 540 - 425 = 115.
</think>

The interior angles of a pentagon sum to 540°, hence x = 115°.

Answer: \\boxed{115}"""


def test_prompts_verbatim():
    assert MULTI_CHOICE_PROMPT.startswith(
        "Answer the multiple choice preceding question. The last line of your response"
    )
    assert "’Answer: \\boxed{$LETTER}’ (without quotes), where LETTER is one of the options." in MULTI_CHOICE_PROMPT
    assert "where FINAL_ANSWER is is your conclusion." in OPEN_PROMPT
    for p in (MULTI_CHOICE_PROMPT, OPEN_PROMPT):
        assert "Avoid repeating steps indefinitely—provide your best guess even if unsure." in p
        assert p.endswith("Think step by step logically, considering all relevant information before answering.")


def test_question_text_lists_options():
    text = build_question_text("Which shape?", ["circle", "square"])
    assert "A. circle\nB. square" in text and text.endswith(MULTI_CHOICE_PROMPT)
    assert build_question_text("How many?", None).endswith(OPEN_PROMPT)


@pytest.mark.parametrize(
    "text, expected",
    [
        (R1_OUTPUT, "115"),
        ("so \\boxed{3} ... wait, recount. Answer: \\boxed{4}", "4"),
        ("Answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ \\text{B} }", "\\text{B}"),
        ("x = \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The area is \\boxed{12\\sqrt{3}} square units.", "12\\sqrt{3}"),
        ("Thinking...\nAnswer: C", "C"),
        ("Thinking...\n**Answer:** 42.", "42"),
        ("Thinking...\nFinal answer: 7\n", "7"),
        ("Answer: 3\nBut actually I am not sure.", None),
        ("No answer here.", None),
        ("", None),
        ("unbalanced \\boxed{12", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: \\boxed{B}",
        "Answer: \\boxed{(B)}",
        "Answer: \\boxed{\\text{B}}",
        "Answer: \\boxed{\\textbf{B}}",
        "Answer: \\boxed{B. square}",
        "Answer: \\boxed{B) square}",
        "Answer: \\boxed{Option B}",
        "Answer: \\boxed{square}",
        "Answer: \\boxed{b}",
        "The tallest bar is green.\nAnswer: B",
    ],
)
def test_option_letter_spellings(completion):
    assert accuracy_reward(completion, "B", ["circle", "square", "triangle"]) == 1.0


@pytest.mark.parametrize(
    "completion",
    ["Answer: \\boxed{A}", "Answer: \\boxed{circle}", "Answer: \\boxed{D}", "Answer: \\boxed{A. square}", "no answer"],
)
def test_wrong_options(completion):
    assert accuracy_reward(completion, "B", ["circle", "square", "triangle"]) == 0.0


def test_answer_given_as_option_text():
    choices = ["red", "green", "blue"]
    assert accuracy_reward("Answer: \\boxed{C}", "blue", choices) == 1.0
    assert accuracy_reward("Answer: \\boxed{blue}", "blue", choices) == 1.0
    assert accuracy_reward("Answer: \\boxed{A}", "blue", choices) == 0.0


def test_letter_answer_without_choices():
    assert accuracy_reward("Answer: \\boxed{(C)}", "C") == 1.0
    assert accuracy_reward("Answer: \\boxed{D}", "C") == 0.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        (R1_OUTPUT, "115"),
        ("Answer: \\boxed{0.5}", "\\frac{1}{2}"),
        ("Answer: \\boxed{\\frac{1}{2}}", "0.5"),
        ("Answer: \\boxed{115^\\circ}", "115"),
        ("Answer: \\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("Answer: \\boxed{x = 4}", "4"),
        ("Answer: \\boxed{50\\%}", "50%"),
        ("Answer: \\boxed{1,000}", "1000"),
        ("Answer: \\boxed{\\text{four}}", "four"),
    ],
)
def test_math_equivalence(completion, answer):
    assert accuracy_reward(completion, answer) == 1.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("Answer: \\boxed{114}", "115"),
        ("Answer: \\boxed{\\frac{1}{3}}", "0.5"),
        ("I think it is 115.", "115"),
        ("Answer: \\boxed{}", "0"),
    ],
)
def test_math_wrong(completion, answer):
    assert accuracy_reward(completion, answer) == 0.0


@pytest.mark.parametrize(
    "completion, reward",
    [
        (R1_OUTPUT, 1.0),
        ("<think>short</think>\\boxed{3}", 1.0),
        ("\n<think>\nreason\n</think>\nAnswer: \\boxed{A}", 1.0),
        ("<think>reason</think>\nAnswer: 3", 0.0),  # no boxed answer
        ("<think>reason \\boxed{3}</think>\nso three", 0.0),  # boxed only inside think
        ("reason</think>\\boxed{3}", 0.0),  # no opening tag
        ("<think>a</think><think>b</think>\\boxed{3}", 0.0),  # two blocks
        ("Preamble <think>a</think>\\boxed{3}", 0.0),  # text before think
        ("\\boxed{3}", 0.0),
    ],
)
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward
