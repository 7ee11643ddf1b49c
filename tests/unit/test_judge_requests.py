"""What the OpenAI judge sends and how it ends a call: token caps, structured outputs on vLLM, truncated and
unusable answers, key fragments kept out of reasons, and the usage of rejected rows counted."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from r1v_ray.config import ConfigError, JudgeConfig, load_config
from r1v_ray.data.synthetic import make_row
from r1v_ray.distill.udfs import RMScore
from r1v_ray.engines.judge import JudgeError
from r1v_ray.engines.judge.fake_server import FakeJudgeServer
from r1v_ray.engines.judge.openai_judge import OpenAIJudge, answer_pattern, parse_answer, scrub_secrets

KEY = "sk-test-AbCdEfGhIjKlMnOp0123456789wxyz"


def _cfg(server: FakeJudgeServer, **kw) -> JudgeConfig:
    return JudgeConfig(
        kind="openai",
        base_url=server.base_url,
        api_key_env="R1V_TEST_JUDGE_KEY",
        timeout_s=5.0,
        requests_per_second=1000.0,
        **kw,
    )


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", KEY)
    return KEY


@pytest.mark.parametrize("owned_by", ["vllm", "openai"])
def test_requests_carry_a_cap_and_the_servers_answer_format(key, owned_by):
    with FakeJudgeServer(owned_by=owned_by) as server:
        judge = OpenAIJudge(_cfg(server, max_tokens=96), None)
        score, reason, usage = judge.rm_score(make_row(0, "train", 0))
    assert 0 <= score <= 5 and reason and usage.calls == 1
    (sent,) = server.requests
    assert sent["max_tokens"] == 96 and sent["seed"] == 0 and sent["temperature"] == 0.0
    if owned_by == "vllm":  # vLLM's own structured outputs, no response_format beside it (vLLM refuses both)
        assert "response_format" not in sent and sent["structured_outputs"]["regex"] == answer_pattern("rm")
    else:
        assert "structured_outputs" not in sent and sent["response_format"]["json_schema"]["name"] == "rm"


def test_answer_patterns_admit_valid_compact_answers_only():
    valid = {
        "assessment": '{"image_necessity":10,"question_quality":3.5,"difficulty":0,"reasoning_demand":9.25,'
        '"integration":1}',
        "verdict": '{"correct":false,"final_answer":"42"}',
        "revision": '{"think":"two steps:\\n\\"a\\" then b","answer":"B"}',
        "rm": '{"score":5,"reason":"sound and concise"}',
    }
    for kind, text in valid.items():
        assert re.fullmatch(answer_pattern(kind), text), kind
        parse_answer(kind, text)
    for kind, text in [
        ("rm", '{"score": 5, "reason": "x"}'),  # whitespace: the run-on the pattern exists to stop
        ("rm", '{"score":6,"reason":"x"}'),
        ("assessment", valid["assessment"].replace(":10,", ":10.5,")),
        ("verdict", '{"correct":true,"final_answer":"' + "x" * 301 + '"}'),
    ]:
        assert not re.fullmatch(answer_pattern(kind), text), text


def test_an_answer_cut_at_the_cap_is_rejected_at_once(key):
    with FakeJudgeServer(answers="length") as server:
        judge = OpenAIJudge(_cfg(server, max_tokens=64), None)
        with pytest.raises(JudgeError, match=r"judge.max_tokens=64 \(finish_reason length\)") as err:
            judge.assess(make_row(0, "train", 1))
    assert len(server.requests) == 1 and err.value.usage.calls == 1 and err.value.usage.output_tokens > 0


@pytest.mark.parametrize("answer_retries", [0, 2])
def test_an_unusable_answer_is_never_asked_again_unchanged(key, answer_retries):
    with FakeJudgeServer(answers="junk") as server:
        judge = OpenAIJudge(_cfg(server, answer_retries=answer_retries, max_retries=6), None)
        with pytest.raises(JudgeError, match="not JSON") as err:
            judge.verify(make_row(0, "train", 2), "<think>x</think> \\boxed{1}")
    assert len(server.requests) == answer_retries + 1 == err.value.usage.calls
    sampled = [(r["seed"], r["temperature"]) for r in server.requests]
    assert len(set(sampled)) == len(sampled)  # each retry differs from every earlier request
    assert all(t >= 0.7 for _, t in sampled[1:])  # and can sample something else at all


def test_a_refused_key_leaves_no_fragment_in_the_reason(key):
    with FakeJudgeServer(answers="unauthorized") as server:
        judge = OpenAIJudge(_cfg(server), None)
        with pytest.raises(JudgeError) as err:
            judge.rm_score(make_row(0, "train", 3))
    reason = str(err.value)
    assert "HTTP 401" in reason and "R1V_TEST_JUDGE_KEY" in reason
    assert KEY[-4:] not in reason and "***" not in reason and KEY[:6] not in reason
    assert len(server.requests) == 1  # a bad key is not retried


def test_scrub_secrets_removes_keys_and_masked_fragments():
    text = f"Incorrect API key provided: sk-tes**********wxyz. Also {KEY} and ...0123456789wxyz at the end."
    clean = scrub_secrets(text, KEY)
    assert "wxyz" not in clean and "sk-" not in clean and "0123456789" not in clean
    assert clean.startswith("Incorrect API key provided: [redacted]") and "at the end" in clean


def test_rejected_rows_carry_what_their_judge_calls_cost(key):
    with FakeJudgeServer(answers="length") as server:
        udf = RMScore(_cfg(server, max_tokens=32), None, 1)
        out = udf(pa.Table.from_pylist([make_row(0, "train", i) for i in range(3)])).to_pylist()
    assert all(r["error"] and "max_tokens=32" in r["error"] for r in out)
    assert [r["judge_calls"] for r in out] == [1, 1, 1]
    assert all(r["judge_input_tokens"] > 0 and r["judge_output_tokens"] > 0 for r in out)


def test_judge_config_is_checked_at_load():
    with pytest.raises(ConfigError, match="judge.max_tokens"):
        load_config(None, ["judge.max_tokens=0"])
    with pytest.raises(ConfigError, match="judge.retry_temperature"):
        load_config(None, ["judge.retry_temperature=3"])
    assert load_config(None, ["judge.server=vllm"]).judge.server == "vllm"
