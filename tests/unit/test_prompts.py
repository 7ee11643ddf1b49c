"""Every stage asks the model the same thing for a row: the paper's prompt, built once in `r1v_ray.prompts`.

If one stage built its own prompt (GRPO training on other text than eval scores, SFT training on other
text than the policy later sees), these fail.
"""

import numpy as np
import pytest

from r1v_ray.config import DistillConfig, R1VConfig
from r1v_ray.data.synthetic import make_row
from r1v_ray.prompts import PromptBuilder, paper_request, row_choices
from r1v_ray.rewards import MULTI_CHOICE_PROMPT, OPEN_PROMPT


def _rows() -> list[dict]:
    rows = [make_row(0, "train", i) for i in range(5)]
    mc = next(r for r in rows if r["choices"])
    mc = {**mc, "choices": np.array(mc["choices"], dtype=object)}  # as Arrow -> NumPy hands them over
    open_q = next(r for r in rows if not r["choices"])
    return [mc, open_q]


def _expected_text(row: dict) -> str:
    """The paper's prompt written out by hand (section 3): question, lettered options, the kind's prompt."""
    if row["choices"] is not None and len(row["choices"]):
        options = "\n".join(f"{'ABCDEFGH'[i]}. {c}" for i, c in enumerate(row["choices"]))
        return f"{row['question']}\n{options}\n{MULTI_CHOICE_PROMPT}"
    return f"{row['question']}\n{OPEN_PROMPT}"


def _user(row: dict) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _expected_text(row)}]}


def _stage_requests(row: dict) -> dict:
    """The request (or user turn) each stage builds for `row`, through the stage's own code."""
    from r1v_ray.distill.udfs import distill_request
    from r1v_ray.engines.judge.openai_judge import judge_query
    from r1v_ray.grpo.rollouts import step_requests
    from r1v_ray.sft.error_set import ErrorSetPass
    from r1v_ray.sft.samples import sft_messages

    cfg = R1VConfig()
    e = cfg.eval
    grpo = step_requests(cfg.grpo, [row], cfg.grpo.group_size, tag=0)[0]
    return {
        "eval": paper_request(row, e.runs, e.max_tokens, e.temperature, e.top_p, seed=cfg.seed),
        "grpo": grpo,
        "sft_error_set": ErrorSetPass(cfg, "unused").build(row),
        "self_distill": distill_request({**row, "rep_penalty": 1.3}, DistillConfig(), seed=0),
        "sft_train": sft_messages(row)[0],
        "judge": judge_query(row),
    }


@pytest.mark.parametrize("kind", ["multiple_choice", "open"])
def test_every_stage_sends_the_papers_prompt_for_a_row(kind):
    row = _rows()[kind == "open"]
    built = _stage_requests(row)
    for stage in ("eval", "grpo", "sft_error_set", "self_distill"):
        req = built[stage]
        assert req.messages == [_user(row)], stage
        assert req.images == [row["image"]], stage
    assert built["grpo"].sampling.logprobs and built["grpo"].sampling.n == R1VConfig().grpo.group_size
    # Per-token log-probs cost the engine time: asked for only where the learner takes its ratio against them.
    from r1v_ray.grpo.rollouts import step_requests

    learner_old = R1VConfig()
    learner_old.grpo.old_logprobs = "learner"
    assert not step_requests(learner_old.grpo, [row], 2, tag=0)[0].sampling.logprobs
    assert built["self_distill"].sampling.repetition_penalty == 1.3  # the row's own DRLC penalty
    assert built["sft_train"] == _user(row)
    assert built["judge"][1] == {"type": "text", "text": f"Query:\n{_expected_text(row)}"}


def test_sft_trains_on_the_prompt_tokens_the_policy_is_sampled_with(tiny_checkpoint):
    """SFT's unlabelled prefix is token for token what the rollout engines and the GRPO learner render."""
    from r1v_ray.model import load_checkpoint
    from r1v_ray.sft.samples import IGNORE, encode_sample

    _, processor = load_checkpoint(tiny_checkpoint)
    builder = PromptBuilder(processor, 4096)
    for row in _rows():
        sample = encode_sample(row, processor, 4096)
        n_prompt = next(i for i, label in enumerate(sample["labels"]) if label != IGNORE)
        text, images, n_tokens = builder.render(paper_request(row, 1, 64, 1.0, 1.0, seed=0))
        rendered = processor(text=[text], images=images, return_tensors="np")["input_ids"][0].tolist()
        assert n_tokens == n_prompt
        assert sample["input_ids"][:n_prompt] == rendered


def test_row_choices_reads_arrow_and_numpy_options_and_open_questions():
    assert row_choices({"choices": np.array(["a", "b"], dtype=object)}) == ["a", "b"]
    assert row_choices({"choices": ["a"]}) == ["a"]
    assert row_choices({"choices": np.array([], dtype=object)}) is None
    assert row_choices({"choices": None}) is None and row_choices({}) is None
