"""The rollout engine on a local Ray: vLLM and HF agree, weight updates land, long prompts are rejected."""

import json
import os
import shutil

import pytest
import ray
import torch
from safetensors.torch import load_file, save_file

from r1v_ray.config import RolloutConfig
from r1v_ray.data.synthetic import make_row
from r1v_ray.engines.rollout import GenerationRequest, HFEngine, Sampling
from r1v_ray.engines.rollout.actor import (
    HeldWorkers,
    create_rollout_workers,
    generate_dataset,
    rollout_placement_group,
)
from r1v_ray.engines.rollout.vllm_engine import CPU_BLOCK_SIZE
from r1v_ray.prompts import paper_request

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# fp32 on both sides; observed |Δ logprob| ~1e-6, tolerance leaves room for kernel differences.
LOGPROB_TOL = 1e-4


def image_request(i: int, **sampling) -> GenerationRequest:
    row = make_row(0, "test", i)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
    return GenerationRequest(messages=messages, images=[row["image"]], sampling=Sampling(**sampling))


@pytest.fixture(scope="module")
def local_ray():
    # Logical over-subscription: 2 real cores, but actors each ask for 1 CPU.
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def vllm_worker(local_ray, tiny_checkpoint):
    cfg = RolloutConfig(backend="vllm", device="cpu", num_workers=1, max_model_len=512, cpu_kvcache_gib=1)
    pg = rollout_placement_group(cfg)
    (worker,) = create_rollout_workers(tiny_checkpoint, cfg, dtype="float32", pg=pg)
    yield worker
    ray.kill(worker)
    ray.util.remove_placement_group(pg)


@pytest.fixture(scope="module")
def hf_engine(tiny_checkpoint):
    return HFEngine(tiny_checkpoint, RolloutConfig(backend="hf", device="cpu", max_model_len=512), dtype="float32")


def test_greedy_outputs_agree_between_vllm_and_hf(vllm_worker, hf_engine):
    requests = [image_request(i, temperature=0.0, max_tokens=16, logprobs=True) for i in range(5)]
    hf = hf_engine.generate(requests)
    vl = ray.get(vllm_worker.generate.remote(requests))
    assert [r.completions[0].token_ids for r in vl] == [r.completions[0].token_ids for r in hf]
    assert [r.prompt_tokens for r in vl] == [r.prompt_tokens for r in hf]
    for a, b in zip(hf, vl):
        assert max(abs(x - y) for x, y in zip(a.completions[0].logprobs, b.completions[0].logprobs)) < LOGPROB_TOL


def test_sampling_n_seed_and_stop(vllm_worker):
    (res,) = ray.get(vllm_worker.generate.remote([image_request(0, n=4, temperature=1.0, max_tokens=8, seed=7)]))
    assert len(res.completions) == 4
    (again,) = ray.get(vllm_worker.generate.remote([image_request(0, n=4, temperature=1.0, max_tokens=8, seed=7)]))
    assert [c.token_ids for c in again.completions] == [c.token_ids for c in res.completions]


def test_weight_update_matches_hf_logprobs(vllm_worker, hf_engine):
    request = image_request(1, temperature=0.0, max_tokens=12)
    sequence = hf_engine.generate([request])[0].completions[0].token_ids
    torch.manual_seed(0)
    new = {
        n: p.detach() + 0.05 * torch.randn_like(p)
        for n, p in hf_engine.model.named_parameters()
        if n.startswith("model.multi_modal_projector.")
    }
    before = ray.get(vllm_worker.sequence_logprobs.remote(request, sequence))
    hf_engine.update_weights(new)
    assert ray.get(vllm_worker.update_weights.remote(ray.put(new))) == len(new)  # a partial dict
    after_hf = hf_engine.sequence_logprobs(request, sequence)
    after_vllm = ray.get(vllm_worker.sequence_logprobs.remote(request, sequence))
    assert max(abs(a - b) for a, b in zip(before, after_vllm)) > 1e-3  # the update changed something
    assert max(abs(a - b) for a, b in zip(after_hf, after_vllm)) < LOGPROB_TOL
    # Generation (not only scoring) sees the new weights: caches were reset.
    hf_out = hf_engine.generate([request])[0].completions[0].token_ids
    vl_out = ray.get(vllm_worker.generate.remote([request]))[0].completions[0].token_ids
    assert vl_out == hf_out


def test_too_long_prompt_is_rejected_not_truncated(vllm_worker):
    long = image_request(2, max_tokens=16)
    long.messages[0]["content"][1]["text"] = "count " * 600
    bad_image = GenerationRequest(messages=[{"role": "user", "content": [{"type": "image"}]}], images=[b"nope"])
    ok, too_long, broken = ray.get(vllm_worker.generate.remote([image_request(0, max_tokens=4), long, bad_image]))
    assert ok.ok and ok.completions
    assert "prompt too long" in too_long.error and not too_long.completions
    assert "undecodable image" in broken.error


def test_generate_over_a_ray_dataset(local_ray, tiny_checkpoint):
    rows = [make_row(0, "test", i) for i in range(6)]
    rows[3]["question"] = "why " * 700  # too long for the context: rejected with its reason
    ds = ray.data.from_items(rows)

    def build(row):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        return GenerationRequest(messages=msgs, images=[row["image"]], sampling=Sampling(temperature=0.0, max_tokens=6))

    cfg = RolloutConfig(backend="vllm", device="cpu", num_workers=1, max_model_len=512, cpu_kvcache_gib=1)
    out = generate_dataset(ds, tiny_checkpoint, cfg, build, dtype="float32", batch_size=4).take_all()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)  # nothing lost
    by_id = {r["id"]: r for r in out}
    assert "prompt too long" in by_id[rows[3]["id"]]["error"]
    good = [r for r in out if r["error"] is None]
    assert len(good) == 5 and all(len(r["completions"]) == 1 for r in good)


def _changed_copy(src, dst, config_extra: dict | None = None):
    """A copy of checkpoint `src`: new LLM weights, or (with `config_extra`) the same weights and a config with
    more keys (an engine cannot tell it holds that model)."""
    shutil.copytree(src, dst)
    if config_extra:
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump({**config, **config_extra}, f)
        return str(dst)
    weights = load_file(os.path.join(src, "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for name, t in weights.items():
        if name.startswith("language_model.") and t.is_floating_point():
            weights[name] = t + 0.05 * torch.randn(t.shape, generator=gen)
    save_file(weights, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def test_held_workers_load_each_model_in_place_and_generate_what_a_new_engine_pool_gets(
    local_ray, tiny_checkpoint, tmp_path
):
    """A stage's held rollout workers (`HeldWorkers`): the engine started on one checkpoint, given the next
    one's weights in place, gives the same seeded rows as a fresh pool of engines on that checkpoint (a
    rejected row keeps its reason); a checkpoint whose config differs gets new workers."""
    rows = [make_row(0, "test", i) for i in range(6)]
    rows[2]["question"] = "why " * 700

    def build(row):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        sampling = Sampling(n=2, temperature=1.0, max_tokens=6, seed=int(row["id"].rsplit("-", 1)[-1]))
        return GenerationRequest(messages=msgs, images=[row["image"]], sampling=sampling)

    def generated(model, workers=None):
        out = generate_dataset(ray.data.from_items(rows), model, cfg, build, "float32", 4, workers).take_all()
        return {r["id"]: (r["error"], list(r["completions"])) for r in out}

    cfg = RolloutConfig(backend="vllm", device="cpu", num_workers=1, max_model_len=512, cpu_kvcache_gib=1)
    second = _changed_copy(tiny_checkpoint, tmp_path / "second")
    renamed = _changed_copy(second, tmp_path / "renamed", config_extra={"r1v_note": "another model"})
    with HeldWorkers(cfg, "float32", "rollout-held") as held:  # beside the module's worker's group
        first_workers = held.serving(tiny_checkpoint)
        before = generated(tiny_checkpoint, held.serving(tiny_checkpoint))
        assert held.serving(second) == first_workers and held.loads == {"started": 1, "in_place": 1}
        after = generated(second, held.serving(second))
        assert held.serving(renamed) != first_workers and held.loads == {"started": 2, "in_place": 1}
    fresh = generated(second)
    assert fresh.keys() == after.keys() == {r["id"] for r in rows}
    assert after == fresh
    assert after != before, "the second checkpoint's weights did not reach generation"
    assert "prompt too long" in after[rows[2]["id"]][0]


def test_many_seeded_requests_in_one_batch(vllm_worker):
    """Regression: seeded requests beyond one prefill chunk crashed vLLM CPU's sampler."""
    reqs = [image_request(i, n=8, temperature=1.0, max_tokens=8, seed=i) for i in range(48)]
    results = ray.get(vllm_worker.generate.remote(reqs))
    assert all(r.ok and len(r.completions) == 8 for r in results)
    # Image placeholders are never sampled (a random model would, ~1 token in 180 here).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ray.get(vllm_worker.ready.remote()))
    banned = {tok.context_image_token_id, tok.start_image_token_id, tok.end_image_token_id}
    assert not banned & {t for r in results for c in r.completions for t in c.token_ids}


def test_the_samples_of_one_prompt_share_its_kv_blocks(vllm_worker):
    """Two requests for one prompt in one batch, as vLLM schedules the n samples of one request: the second
    takes all but the prompt's last partial KV block from the first, through the prefix cache."""
    request = paper_request(make_row(0, "test", 40), 1, 4, 1.0, 1.0, seed=0)
    first, second = ray.get(vllm_worker.generate.remote([request, request]))
    assert first.prompt_tokens == second.prompt_tokens > CPU_BLOCK_SIZE
    assert second.cached_prompt_tokens >= second.prompt_tokens - CPU_BLOCK_SIZE, second


def test_batch_decoded_texts_equal_vllms_own_detokenizer(vllm_worker):
    """Without stop strings texts are batch-decoded after generation; with one (that never matches) vLLM
    detokenizes incrementally. Same seeds, same tokens: the texts must be the same, the random model's
    cut-off multi-byte characters included."""
    plain = [image_request(i, n=8, temperature=1.0, max_tokens=48, seed=i, logprobs=True) for i in range(8)]
    stopped = [
        image_request(i, n=8, temperature=1.0, max_tokens=48, seed=i, logprobs=True, stop=["\x00never"])
        for i in range(8)
    ]
    a, b = ray.get(vllm_worker.generate.remote(plain)), ray.get(vllm_worker.generate.remote(stopped))
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra.completions, rb.completions)]
    assert len(pairs) == 64 and all(x.token_ids == y.token_ids and x.logprobs == y.logprobs for x, y in pairs)
    assert [x.text for x, _ in pairs] == [y.text for _, y in pairs]


def test_requests_sharing_an_id_get_their_own_completions(vllm_worker, hf_engine):
    """Row ids repeat across merged sources; the engines match results to requests by position, not by id."""
    alike = [image_request(i, temperature=0.0, max_tokens=12) for i in (0, 3)]
    alone = [hf_engine.generate([r])[0].completions[0].token_ids for r in alike]
    assert alone[0] != alone[1]  # two different questions, two different answers
    for r in alike:
        r.request_id = "1"
    for results in (hf_engine.generate(alike), ray.get(vllm_worker.generate.remote(alike))):
        assert [r.request_id for r in results] == ["1", "1"]
        assert [r.completions[0].token_ids for r in results] == alone
