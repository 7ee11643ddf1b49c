"""The learner's shared-prompt packing: each prompt (and image) once per group, completions after it,
log-probs equal to scoring every (prompt + completion) on its own."""

import random

import pytest
import torch

from r1v_ray.data.synthetic import iter_rows
from r1v_ray.grpo.batch import Trajectory, completion_logprobs, encode, pack_groups
from r1v_ray.model import load_checkpoint
from r1v_ray.model.varlen import use_varlen_attention
from r1v_ray.prompts import PromptBuilder, paper_request


@pytest.fixture(scope="module")
def model_and_trajectories(tiny_checkpoint):
    model, processor = load_checkpoint(tiny_checkpoint)
    rng = random.Random(0)
    trajectories = []
    for row in iter_rows(3, seed=1):
        request = paper_request(row, 1, 64, 1.0, 1.0, seed=0)
        for _ in range(4):  # a group; one completion is a single token
            n = rng.choice([1, 7, 30])
            trajectories.append(Trajectory(request, [rng.randrange(300, 600) for _ in range(n)], [], 0.0, 0.0))
    rng.shuffle(trajectories)  # groups interleaved, as after sharding
    return model, processor, trajectories


def _alone(model, group, completion) -> list[float]:
    ids = torch.tensor([group.prompt_ids + completion])
    logits = model(input_ids=ids, pixel_values=torch.from_numpy(group.pixel_values)).logits[0].float()
    logp = torch.log_softmax(logits[len(group.prompt_ids) - 1 : -1], -1)
    return logp.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1).tolist()


def test_shared_prompt_logprobs_equal_each_sequence_alone(model_and_trajectories):
    model, processor, trajectories = model_and_trajectories
    groups = encode(trajectories, processor, PromptBuilder(processor, 1024))
    assert len(groups) == 3 and sorted(m for g in groups for m in g.members) == list(range(len(trajectories)))
    batch, layout, predict_at, targets = pack_groups(groups)
    prompt_tokens = sum(len(g.prompt_ids) for g in groups)
    assert batch["input_ids"].shape[1] == prompt_tokens + sum(len(t.completion_ids) for t in trajectories)
    assert batch["pixel_values"].shape[0] == 3 and len(predict_at) == len(targets)  # one image per group
    with torch.no_grad():
        expected = {g.members[i]: _alone(model, g, c) for g in groups for i, c in enumerate(g.completions)}
        with pytest.raises(ValueError, match="use_varlen_attention"):
            completion_logprobs(model, groups)
        use_varlen_attention(model)
        logp, mask, entropy = completion_logprobs(model, groups, with_entropy=True)
    for i, traj in enumerate(trajectories):
        n = len(traj.completion_ids)
        assert mask[i].sum() == n and bool((entropy[i, :n] > 0).all())
        assert max(abs(a - b) for a, b in zip(logp[i, :n].tolist(), expected[i])) < 1e-4


def test_gradients_reach_the_projector_through_the_shared_prompt(model_and_trajectories):
    model, processor, trajectories = model_and_trajectories
    use_varlen_attention(model)
    model.zero_grad()
    logp, mask, _ = completion_logprobs(model, encode(trajectories, processor, PromptBuilder(processor, 1024)))
    (logp * mask).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "multi_modal_projector" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
