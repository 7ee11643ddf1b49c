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
