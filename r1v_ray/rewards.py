"""The paper's evaluation prompts, the answer extractor Φ and the rule-based rewards.

How a row becomes the text sent to a model (question, options, these prompts) is `r1v_ray.prompts`.

Public contract (DESIGN.md): MULTI_CHOICE_PROMPT, OPEN_PROMPT, extract_answer,
accuracy_reward, format_reward. Math equivalence is math-verify's job; this
module only normalizes the spellings models use for option letters.
"""

from __future__ import annotations

import re
import string

# Paper section 3, verbatim (including its quote marks and its "is is").
MULTI_CHOICE_PROMPT = (
    "Answer the multiple choice preceding question. The last line of your response should follow "
    "this format: ’Answer: \\boxed{$LETTER}’ (without quotes), where LETTER is one of the options. "
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely—provide your best guess even if "
    "unsure. Think step by step logically, considering all relevant information before answering."
)
OPEN_PROMPT = (
    "Answer the preceding question. The last line of your response should follow this format: "
    "’Answer: \\boxed{$FINAL_ANSWER}’ (without quotes), where FINAL_ANSWER is is your conclusion. "
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely—provide your best guess even if "
    "unsure. Think step by step logically, considering all relevant information before answering."
)

OPTION_LETTERS = string.ascii_uppercase


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACES = re.compile(r"[{}]")
# Matched against a stripped line; one quantifier per gap keeps long runs of spaces or stars linear.
_ANSWER_LINE = re.compile(r"^[\s*]*(?:final\s+)?answer[\s*]*[:：]\s*(.+)$", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces; None if unbalanced.

    One pass pairs every brace (a stack), so the cost is linear however many boxes are left open."""
    opens = [m.end() - 1 for m in _BOXED.finditer(text)]
    if not opens:
        return None
    closing, stack = {}, []
    for m in _BRACES.finditer(text, opens[0]):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for brace in reversed(opens):
        if brace in closing:
            return text[brace + 1 : closing[brace]].strip()
    return None


def extract_answer(text: str) -> str | None:
    """Φ: the last \\boxed{...} content; else the value of the final 'Answer: X' line; else None."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for line in reversed(text.strip().splitlines()):
        if not line.strip():
            continue
        match = _ANSWER_LINE.match(line.strip())
        if match:
            value = match.group(1).strip().strip("*").strip()
            return value.rstrip(".").strip() or None
        break  # only the final non-empty line counts
    return None


_WRAPPER_TOKENS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|operatorname)\s*\{|[{}]")


def _strip_latex_wrappers(s: str) -> str:
    """\\text{B} -> B (nested too), in one pass; an unclosed wrapper is kept as written."""
    out, stack, pos = [], [], 0  # stack: index in `out` of each open wrapper, None for a plain brace
    for m in _WRAPPER_TOKENS.finditer(s):
        out.append(s[pos : m.start()])
        pos, token = m.end(), m.group()
        if token == "}" and stack:
            opened = stack.pop()
            if opened is not None:
                out[opened] = ""  # a closed wrapper: drop its opening and this brace
                continue
        elif token != "}":
            stack.append(len(out) if token != "{" else None)
        out.append(token)
    out.append(s[pos:])
    return "".join(out)


def normalize_text(s: str) -> str:
    s = _strip_latex_wrappers(s).replace("$", "").replace("\\%", "%")
    s = re.sub(r"\s+", " ", s).strip().strip(".").strip()
    return s.lower()


_LETTER_PATTERNS = [
    re.compile(r"^([a-z])$"),  # B
    re.compile(r"^[\(\[]\s*([a-z])\s*[\)\]](?:\s.*)?$"),  # (B), [B], (B) 42
    re.compile(r"^([a-z])\s*[\.:\)](?:\s.*)?$"),  # B. / B) / B: 42
    re.compile(r"^(?:option|choice)\s*[\(\[]?\s*([a-z])\s*[\)\]]?(?:[\.:]?\s.*)?$"),  # Option B
]


def _option_letter(pred: str, choices: list[str] | None) -> str | None:
    """Read an option letter from 'B', '(B)', 'B.', '\\text{B}', 'Option B', 'B: text' or the option's text."""
    norm = normalize_text(pred)
    n = len(choices) if choices else 26
    for pattern in _LETTER_PATTERNS:
        match = pattern.match(norm)
        if match and OPTION_LETTERS.index(match.group(1).upper()) < n:
            return match.group(1).upper()
    if choices:
        for i, choice in enumerate(choices):
            if norm == normalize_text(str(choice)):
                return OPTION_LETTERS[i]
    return None


def _math_equal(pred: str, gold: str) -> bool:
    """math-verify's equivalence, in a worker process with a hard deadline (r1v_ray.answer_check)."""
    from r1v_ray.answer_check import math_equal

    return math_equal(pred, gold)


def _is_letter_answer(answer: str, choices: list[str] | None) -> bool:
    a = answer.strip()
    n = len(choices) if choices else 26
    return len(a) == 1 and a.upper() in OPTION_LETTERS[:n]


def accuracy_reward(completion: str, answer: str, choices: list[str] | None = None) -> float:
    """1.0 when Φ(completion) matches `answer`, else 0.0."""
    pred = extract_answer(completion)
    if pred is None or answer is None:
        return 0.0
    answer = str(answer)
    if choices or _is_letter_answer(answer, choices):
        gold_letter = answer.strip().upper() if _is_letter_answer(answer, choices) else _option_letter(answer, choices)
        if gold_letter is not None:
            return 1.0 if _option_letter(pred, choices) == gold_letter else 0.0
    if normalize_text(pred) == normalize_text(answer):
        return 1.0
    return 1.0 if _math_equal(pred, answer) else 0.0


def format_reward(completion: str) -> float:
    """1.0 iff exactly one <think>...</think> block comes first, then a \\boxed{} answer after it."""
    if completion.count("<think>") != 1 or completion.count("</think>") != 1:
        return 0.0
    head, _, tail = completion.partition("</think>")
    if "<think>" not in head or head.split("<think>")[0].strip():
        return 0.0
    return 1.0 if _last_boxed(tail) is not None else 0.0
