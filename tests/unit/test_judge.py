"""The judges without Ray: local clarity, textual signals, answer parsing, rate limit, retries, cache."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from r1v_ray.config import JudgeConfig
from r1v_ray.data.synthetic import make_row
from r1v_ray.distill.dataflow import Correlation, add_penalty
from r1v_ray.engines.judge import JudgeError, OfflineJudge, image_clarity
from r1v_ray.engines.judge.fake_server import FakeJudgeServer
from r1v_ray.engines.judge.offline import text_signals
from r1v_ray.engines.judge.openai_judge import OpenAIJudge, TokenBucket, parse_answer


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_clarity_drops_with_blur_and_resolution():
    rng = np.random.default_rng(0)
    sharp = Image.fromarray((rng.random((448, 448)) > 0.5).astype(np.uint8) * 255)
    blurred = sharp.filter(ImageFilter.GaussianBlur(6))
    small = sharp.resize((32, 32))
    assert image_clarity(_png(sharp)) > image_clarity(_png(blurred)) + 0.1
    assert image_clarity(_png(sharp)) > image_clarity(_png(small)) + 0.1
    assert 0.0 <= image_clarity(_png(blurred)) <= 1.0


def test_integration_follows_the_papers_patterns():
    deep = text_signals(
        "Why do the two bars differ, and how does the missing angle relate to the polygon's interior angles?"
    )
    plain = text_signals("What is the object?")
    assert deep.integration > plain.integration + 0.3
    assert deep.difficulty > plain.difficulty
    assert deep.reasoning_demand > plain.reasoning_demand
    assert text_signals("what what is the the").question_quality < plain.question_quality


def test_parse_answer_rejects_unusable_answers():
    assert parse_answer("rm", '{"score": 4, "reason": "ok"}')["score"] == 4
    for bad in ("{not json", '{"score": 4}', '{"score": 9, "reason": "x"}', '{"score": true, "reason": "x"}', ""):
        with pytest.raises(ValueError):
            parse_answer("rm", bad)
    with pytest.raises(ValueError, match="integration"):
        parse_answer(
            "assessment",
            '{"image_necessity": 1, "question_quality": 1, "difficulty": 1, "reasoning_demand": 1, "integration": 11}',
        )


def test_token_bucket_limits_the_rate():
    bucket = TokenBucket(rate=20.0, capacity=1.0)
    start = time.monotonic()
    for _ in range(11):
        bucket.acquire()
    assert time.monotonic() - start >= 0.45  # 10 refills at 20/s after the first token
    with pytest.raises(ValueError, match="requests_per_second"):
        TokenBucket(rate=0)


def test_offline_revision_prefers_a_correct_hinted_generation():
    judge, row = OfflineJudge(), make_row(0, "train", 1)
    good = f"<think>\ncounting\n</think>\n\nAnswer: \\boxed{{{row['answer']}}}"
    assert judge.revise(row, "<think>x</think> \\boxed{zzz}", lambda r: good)[0] == good
    fallback, _ = judge.revise(row, "wrong", lambda r: "still wrong")
    assert row["rationale"] in fallback and f"\\boxed{{{row['answer']}}}" in fallback
    with pytest.raises(JudgeError, match="rationale"):
        judge.revise({**row, "rationale": None}, "wrong", lambda r: "still wrong")
    assert judge.verify(row, good)[0] and not judge.verify(row, "\\boxed{zzz}")[0]


def test_offline_rm_score_rubric():
    judge, row = OfflineJudge(), make_row(0, "train", 2)
    assert judge.rm_score(row)[0] == 5
    score, reason, _ = judge.rm_score({**row, "think": "a a a a a a a a", "response": "Answer: \\boxed{nope}"})
    assert score <= 2 and "correct" in reason and "fluent" in reason


def test_offline_rm_scores_what_the_chain_says_about_the_image():
    """A right answer reached by a chain that misreads the image scores below the reference chain."""
    judge = OfflineJudge()
    row = next(r for r in (make_row(0, "train", i) for i in range(40)) if r["category"] == "sum_digits")
    digits = row["rationale"].split("are ")[1].split(".")[0]  # "3, 5"
    one_wrong = row["rationale"].replace(digits, f"{digits.split(', ')[0]}, 0")
    assert judge.rm_score({**row, "think": row["rationale"]})[0] == 5
    score, reason, _ = judge.rm_score({**row, "think": one_wrong})
    assert score == 4 and reason == "missing: faithful"
    vague = f"I look at the image and add what I see. The answer is {row['answer']} in the end."
    score, reason, _ = judge.rm_score({**row, "think": vague})
    assert score == 3 and reason == "missing: grounded, faithful"


def test_offline_rm_grounded_means_three_quarters_of_the_reference_facts():
    """Half of the facts was the old bar, and nearly every distilled chain cleared it: the scores took two
    values and |D_rm(tau)| barely fell."""
    row = {**make_row(0, "train", 2), "question": "What is shown?", "rationale": "alpha beta gamma delta"}
    said = {3: "I see alpha beta gamma in this picture here.", 2: "I see alpha beta in this picture here."}
    assert OfflineJudge().rm_score({**row, "think": said[3]})[:2] == (4, "missing: faithful")
    assert OfflineJudge().rm_score({**row, "think": said[2]})[:2] == (3, "missing: grounded, faithful")


def test_penalty_normalization_and_correlation():
    table = pa.table({"s_v_raw": [0.2, 0.6, 1.0], "s_t_raw": [0.5, 0.5, 0.5], "s_i_raw": [0.0, 0.5, 1.0]})
    out = add_penalty(table, {"s_v": (0.2, 1.0), "s_t": (0.5, 0.5), "s_i": (0.0, 1.0)}, alpha=0.7, beta=1.0, gamma=1.0)
    assert out.column("s_v").to_pylist() == pytest.approx([0.0, 0.5, 1.0])
    assert out.column("s_t").to_pylist() == [0.5, 0.5, 0.5]  # a constant score sits in the middle
    penalties = out.column("rep_penalty").to_pylist()
    assert penalties[0] > penalties[1] > penalties[2] >= 1.0  # easy, plain queries get the strongest penalty
    corr = Correlation()
    x, y = [1.0, 1.2, 1.5, 1.9], [50, 40, 45, 10]
    corr.observe(pa.table({"rep_penalty": x[:2], "generated_tokens": y[:2]}))
    corr.observe(pa.table({"rep_penalty": x[2:], "generated_tokens": y[2:]}))
    assert corr.value() == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)


@pytest.fixture
def fake_server():
    with FakeJudgeServer(faults=True, timeout_sleep_s=1.5) as server:
        yield server


def _judge_cfg(server, **kw) -> JudgeConfig:
    return JudgeConfig(
        kind="openai",
        base_url=server.base_url,
        api_key_env="R1V_TEST_JUDGE_KEY",
        timeout_s=0.5,
        requests_per_second=1000.0,
        **kw,
    )


def test_openai_judge_retries_faults_and_caches(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", "test-key")
    rows = [make_row(0, "train", i) for i in range(6)]
    judge = OpenAIJudge(_judge_cfg(fake_server), str(tmp_path / "cache"))
    total = None
    for row in rows:
        a, usage = judge.assess(row)
        score, _, u2 = judge.rm_score(row)
        ok, u3 = judge.verify(row, f"<think>x</think> Answer: \\boxed{{{row['answer']}}}")
        assert ok and 0 <= score <= 5 and 0 <= a.integration <= 1
        for u in (usage, u2, u3):
            total = u if total is None else total.__iadd__(u)
    assert total.retries > 0 and total.calls == total.retries + 18 and total.input_tokens > 0
    assert {"429", "500", "timeout", "badjson"} <= set(fake_server.served)
    served = sum(fake_server.served.values())
    again = OpenAIJudge(_judge_cfg(fake_server), str(tmp_path / "cache"))
    hits = sum(again.assess(r)[1].cache_hits + again.rm_score(r)[2].cache_hits for r in rows)
    assert hits == 12 and sum(fake_server.served.values()) == served  # a re-run makes no new call


def test_openai_judge_gives_up_with_a_reason(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", "test-key")
    judge = OpenAIJudge(_judge_cfg(fake_server, max_retries=0), None)
    errors = []
    for i in range(8):
        try:
            judge.assess(make_row(0, "train", i))
        except JudgeError as exc:
            errors.append(str(exc))
    assert errors and all("after 1 attempts" in e for e in errors)
    monkeypatch.delenv("R1V_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="R1V_TEST_JUDGE_KEY"):
        OpenAIJudge(_judge_cfg(fake_server), None)
