"""The SFT trainer on Ray Train + DeepSpeed (2 CPU workers, gloo): resume after a killed worker, frozen parts."""

import json
import os
import signal
import threading
import time

import psutil
import pytest
import ray
import torch
from safetensors.torch import load_file

from r1v_ray.config import SFTConfig
from r1v_ray.data.synthetic import write_split
from r1v_ray.sft.ray_train import run_sft
from r1v_ray.sft.trainer import METRICS_FILE, RESUMES_FILE, SEEN_FILE, SFTJob

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _kill_a_worker_after(out: str, steps: int, killed: list) -> None:
    """SIGKILL a training worker once the controller registered a checkpoint and `steps` steps ran."""
    seen_path = os.path.join(out, SEEN_FILE)
    snapshot = os.path.join(out, "ray_train", "checkpoint_manager_snapshot.json")
    deadline = time.time() + 300
    while time.time() < deadline and (len(_lines(seen_path)) < steps or not os.path.exists(snapshot)):
        time.sleep(0.05)
    _kill_one_train_worker(killed)


def _kill_one_train_worker(killed: list) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in (proc.info["cmdline"] or [])):
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
            return


def test_killed_worker_resumes_without_losing_or_repeating_samples(local_ray, tiny_checkpoint, tmp_path):
    data = str(tmp_path / "train")
    write_split(data, 160, seed=1)
    out = str(tmp_path / "sft")
    job = SFTJob(
        init_checkpoint=tiny_checkpoint,
        data_uri=data,
        output_dir=out,
        learning_rate=1e-3,
        stage="crash",
        sft=SFTConfig(
            global_batch_size=16,
            micro_batch_size=1,
            max_length=512,
            zero_stage=2,
            num_workers=2,
            use_gpu=False,
            checkpoint_every_steps=3,
            log_every_steps=1,
            warmup_ratio=0.1,
            max_failures=2,
        ),
        trainable_prefixes=["projector", "llm"],
    )
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after, args=(out, 4, killed))
    killer.start()
    final = run_sft(job)
    killer.join()
    assert killed, "no worker was killed"
    resumes = _lines(os.path.join(out, RESUMES_FILE))
    assert resumes and resumes[0]["resumed_at_step"] in (3, 6, 9)  # a checkpoint the controller registered
    seen = _lines(os.path.join(out, SEEN_FILE))
    assert [r["step"] for r in seen] == list(range(1, 11))
    ids = [i for r in seen for i in r["ids"]]
    assert len(ids) == 160 and len(set(ids)) == 160  # every sample exactly once
    assert [r["step"] for r in _lines(os.path.join(out, METRICS_FILE))] == list(range(1, 11))
    assert os.path.exists(os.path.join(final, "model.safetensors"))


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_projector_only_training_leaves_frozen_parts_bit_identical(local_ray, tiny_checkpoint, tmp_path, zero_stage):
    data = str(tmp_path / "train")
    write_split(data, 32, seed=2)
    job = SFTJob(
        init_checkpoint=tiny_checkpoint,
        data_uri=data,
        output_dir=str(tmp_path / "sft"),
        learning_rate=1e-2,
        sft=SFTConfig(
            global_batch_size=16,
            micro_batch_size=4,
            max_length=512,
            zero_stage=zero_stage,
            num_workers=2,
            use_gpu=False,
            checkpoint_every_steps=10,
            log_every_steps=1,
        ),
        trainable_prefixes=["projector"],
    )
    final = run_sft(job)
    before = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    after = load_file(os.path.join(final, "model.safetensors"))
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector." in k for k in changed)  # saved names drop "model."
    metrics = _lines(os.path.join(job.output_dir, METRICS_FILE))
    assert len(metrics) == 2 and all(
        {"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(m) for m in metrics
    )


def _chain_sft(**overrides) -> SFTConfig:
    values = dict(global_batch_size=16, micro_batch_size=4, max_length=512, zero_stage=2, num_workers=2)
    values.update(use_gpu=False, checkpoint_every_steps=100, log_every_steps=1, **overrides)
    return SFTConfig(**values)


def _job(init, data, out, sft, stage, lr=1e-2):
    return SFTJob(init, data, out, lr, sft=sft, stage=stage, trainable_prefixes=["projector", "llm"])


def test_a_chain_trains_each_job_from_the_one_before_in_one_ray_train_run(local_ray, tiny_checkpoint, tmp_path):
    """MLP initialization's sub-stages: one worker group, the same models as separate runs one after the other."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write_split(first, 32, seed=3)
    write_split(second, 16, seed=4)
    sft = _chain_sft()
    chained = [str(tmp_path / "chain" / n) for n in ("a", "b")]
    a, b = run_sft(
        [
            _job(tiny_checkpoint, first, chained[0], sft, "x/a"),
            _job(os.path.join(chained[0], "model"), second, chained[1], sft, "x/b", lr=5e-3),
        ]
    )
    alone_a = run_sft(_job(tiny_checkpoint, first, str(tmp_path / "alone_a"), sft, "x/a"))
    alone_b = run_sft(_job(alone_a, second, str(tmp_path / "alone_b"), sft, "x/b", lr=5e-3))
    for chain_model, alone_model in ((a, alone_a), (b, alone_b)):
        got, want = (load_file(os.path.join(m, "model.safetensors")) for m in (chain_model, alone_model))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), chain_model
    before = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    assert any(not torch.equal(before[k], load_file(os.path.join(a, "model.safetensors"))[k]) for k in before)
    with open(os.path.join(b, "r1v_meta.json")) as f:
        assert json.load(f)["init_checkpoint"] == a  # the second job started from the first's model
    assert os.path.isdir(os.path.join(chained[0], "ray_train"))  # the chain's one Ray Train run
    assert not os.path.exists(os.path.join(chained[1], "ray_train"))


def test_a_chain_restarted_in_its_second_job_keeps_the_first_and_starts_the_second_over(
    local_ray, tiny_checkpoint, tmp_path
):
    """The latest checkpoint after the kill is the first job's last one; the second job must not resume
    from it (its state.json names the first job), and the first, published, is not trained again."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write_split(first, 32, seed=3)
    write_split(second, 160, seed=1)
    sft = _chain_sft(micro_batch_size=1, max_failures=2)
    outs = [str(tmp_path / n) for n in ("a", "b")]
    chain = [
        _job(tiny_checkpoint, first, outs[0], sft, "x/a"),
        _job(os.path.join(outs[0], "model"), second, outs[1], sft, "x/b"),
    ]
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_when, args=(os.path.join(outs[1], SEEN_FILE), 2, killed))
    killer.start()
    run_sft(chain)
    killer.join()
    assert killed, "no worker was killed"
    assert [r["step"] for r in _lines(os.path.join(outs[0], SEEN_FILE))] == [1, 2]  # trained once
    assert not _lines(os.path.join(outs[0], RESUMES_FILE)) and not _lines(os.path.join(outs[1], RESUMES_FILE))
    seen = _lines(os.path.join(outs[1], SEEN_FILE))
    assert [r["step"] for r in seen] == list(range(1, 11))
    ids = [i for r in seen for i in r["ids"]]
    assert len(ids) == 160 and len(set(ids)) == 160


def _kill_a_worker_when(seen_path: str, steps: int, killed: list) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and len(_lines(seen_path)) < steps:
        time.sleep(0.05)
    _kill_one_train_worker(killed)
