"""The paper's evaluation prompts, the answer extractor Φ and the rule-based rewards.

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


def format_choices(choices: list[str]) -> str:
    return "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices))


def build_question_text(question: str, choices: list[str] | None) -> str:
    """Question, options (A., B., ...) and the matching paper prompt, as the eval sends them."""
    if choices:
        return f"{question}\n{format_choices(choices)}\n{MULTI_CHOICE_PROMPT}"
    return f"{question}\n{OPEN_PROMPT}"


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:：]\s*(.+?)\s*$", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces; None if unbalanced."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
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
        match = _ANSWER_LINE.match(line)
        if match:
            value = match.group(1).strip().strip("*").strip()
            return value.rstrip(".").strip() or None
        break  # only the final non-empty line counts
    return None


_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|operatorname)\s*\{([^{}]*)\}")


def _strip_latex_wrappers(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _WRAPPERS.sub(r"\1", s)
    return s


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
    from math_verify import parse, verify

    try:
        # Timeouts are disabled: math-verify's signal-based timer breaks in worker threads.
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # math-verify raises on exotic input; an unparsable answer is wrong
        return False


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
