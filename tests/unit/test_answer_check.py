"""Answer checks have a hard deadline (a killed worker process) and the answer extractor is linear."""

import json
import subprocess
import sys
import threading
import time

import pytest

from r1v_ray import answer_check
from r1v_ray.rewards import _last_boxed, accuracy_reward, extract_answer, normalize_text

# Both ran for minutes (the second also grew to 480 MB) when math-verify's timeouts were off.
HOSTILE = ["<think>x</think> \\boxed{9^{9^{9}}}", "<think>x</think> \\boxed{(10^{1000000})!}"]


@pytest.fixture
def fast_deadline(monkeypatch):
    """This process's pool rebuilt with a 1 s deadline, and put back afterwards."""
    monkeypatch.setenv("R1V_ANSWER_CHECK_TIMEOUT_S", "1")
    old, answer_check._pool = answer_check._pool, None
    yield answer_check.pool()
    answer_check.pool().close()
    answer_check._pool = old


def within(seconds: float, fn, *args):
    """fn(*args), failing the test (instead of hanging it) when it runs past `seconds`."""
    box, start = {}, time.monotonic()
    thread = threading.Thread(target=lambda: box.setdefault("value", fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    # A C call (a regex) that holds the GIL delays the join itself, hence the clock as well.
    assert not thread.is_alive() and time.monotonic() - start < seconds, f"still running after {seconds}s"
    return box["value"]


# Run in a child process: a check without a deadline holds the GIL in one C call that no thread can stop.
HOSTILE_RUN = """
import json, sys
from r1v_ray import answer_check
from r1v_ray.grpo.reward import RewardWorker
from r1v_ray.rewards import accuracy_reward

case = json.load(sys.stdin)
accuracy_reward(*case["warm"])  # starts the worker outside the deadlines below
out = {"hostile": [accuracy_reward(c, "42") for c in case["hostile"]], "timeouts": answer_check.stats()["timeouts"]}
out["after"] = [accuracy_reward(*pair) for pair in case["after"]]  # the pool replaced the killed workers
worker = RewardWorker(1.0, 0.5, [])
out["worker"] = worker.score([tuple(item) + (None,) for item in case["worker"]])
out["worker_timeouts"] = worker.timeouts()
print(json.dumps(out))
"""
GOOD = "<think>x</think> \\boxed{\\frac{6}{2}}"
CASE = {
    "warm": ["\\boxed{2}", "3"],
    "hostile": HOSTILE,
    "after": [["\\boxed{\\frac{1}{2}}", "0.5"], ["\\boxed{3}", "4"]],
    "worker": [[GOOD, "3"], [HOSTILE[0], "42"], [GOOD, "4"]],
}


def test_runaway_checks_score_zero_within_their_deadline_and_are_counted(monkeypatch):
    monkeypatch.setenv("R1V_ANSWER_CHECK_TIMEOUT_S", "1")
    proc = subprocess.run(
        [sys.executable, "-c", HOSTILE_RUN], input=json.dumps(CASE), capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hostile"] == [0.0, 0.0] and out["timeouts"] == 2
    assert out["after"] == [1.0, 0.0]
    assert [s["accuracy"] for s in out["worker"]] == [1.0, 0.0, 0.0]
    assert [s["accuracy_timeout"] for s in out["worker"]] == [0, 1, 0]
    assert out["worker_timeouts"] == 3


def test_checks_from_many_threads_get_their_own_answers(fast_deadline):
    cases = [(f"\\boxed{{\\frac{{{2 * i}}}{{2}}}}", str(i), 1.0) for i in range(12)]
    cases += [(f"\\boxed{{{i}}}", str(i + 1), 0.0) for i in range(12)]
    results = {}

    def run(k):
        completion, answer, _ = cases[k]
        results[k] = accuracy_reward(completion, answer)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {k: expected for k, (_, _, expected) in enumerate(cases)}


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 20_000,  # was quadratic: 4,000 took 4 s
        "x\n" + " " * 50_000 + "y",  # the answer-line pattern backtracked over long blank runs
        "Answer: a" + " " * 50_000 + "b",
        "\\boxed{" + "\\text{" * 20_000 + "x" + "}" * 20_001,  # wrapper stripping was one pass per level
    ],
)
def test_extraction_is_linear_on_hostile_text(text):
    within(5, lambda: normalize_text(extract_answer(text) or ""))


def test_linear_extractor_keeps_the_old_answers():
    assert _last_boxed("\\boxed{a} then \\boxed{b{c}d} and \\boxed{open") == "b{c}d"
    assert _last_boxed("}} \\boxed{x}") == "x"
    assert _last_boxed("\\boxed{a \\boxed{b}") == "b"
    assert _last_boxed("\\boxed{x") is None
    assert extract_answer("work\n** Final Answer **: 42.") == "42"
    assert normalize_text("\\text{\\textbf{B}}") == "b" and normalize_text("\\text{B") == "\\text{b"
