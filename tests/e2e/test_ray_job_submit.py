"""End to end: a local head (`ray start --head`, dashboard on 127.0.0.1), the demo's stages submitted with
`ray job submit`, each job SUCCEEDED according to the dashboard's job API, outputs on disk.

It is also the pipeline's proof with fixed seeds (the demo config: 512 training rows, T = 2, re-distillation
before each iteration, 40 GRPO steps): M_T beats the re-assembled model on the test split, frozen parts stay
bit-identical, a finished stage is skipped when submitted again, and GRPO's held-out reward ends above step 0."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest
import requests
import torch

from r1v_ray.model import load_checkpoint
from r1v_ray.model.factory import load_llm, load_vision

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# The demo config as it is; only the final stand-alone evaluation is lighter.
EVAL_OVERRIDES = ["eval.runs=1"]
STAGES = ("distill", "score", "mlp_init", "reassemble", "sft", "grpo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    port, dash = _free_port(), _free_port()
    token_path = tmp / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    # Token authentication on: the job API refuses requests without the cluster's token.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=8",
            "--include-dashboard=true",
            f"--temp-dir={tmp}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    address = f"http://127.0.0.1:{dash}"
    headers = {"Authorization": f"Bearer {token_path.read_text()}"}
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{address}/api/version", headers=headers, timeout=5).ok:
                break
        except requests.ConnectionError:
            time.sleep(1)
    yield address, env, headers
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _submit(address: str, env: dict, run_dir: str, script: str, *extra: str) -> str:
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ROOT,
        "--no-wait",
        "--",
        sys.executable,
        f"jobs/{script}.py",
        "--config",
        "configs/demo/tiny.yaml",
        "--set",
        f"run_dir={run_dir}",
        *extra,
    ]
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=300).stdout
    return next(line.split("'")[1] for line in out.splitlines() if "submitted successfully" in line)


def _wait(address: str, headers: dict, job_id: str, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = requests.get(f"{address}/api/jobs/{job_id}", headers=headers, timeout=10).json()
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(2)
    raise TimeoutError(job_id)


def _run(address: str, env: dict, headers: dict, run_dir: str, script: str, *extra: str) -> str:
    """Submit one job, wait for it, assert SUCCEEDED through the job API; its logs."""
    job_id = _submit(address, env, run_dir, script, *extra)
    info = _wait(address, headers, job_id)
    logs = requests.get(f"{address}/api/jobs/{job_id}/logs", headers=headers, timeout=10).json().get("logs", "")
    assert info["status"] == "SUCCEEDED", f"{script}: {info.get('message')}\n{logs[-3000:]}"
    return logs


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_demo_stages_run_as_ray_jobs(head, tmp_path):
    address, env, headers = head
    assert requests.get(f"{address}/api/jobs/", timeout=10).status_code == 401  # no token, no job API
    run_dir = str(tmp_path / "run")
    logs = {
        script: _run(address, env, headers, run_dir, script)
        for script in ("distill", "score", "mlp_init", "reassemble", "iterative_sft", "grpo")
    }
    final_eval = (
        "--checkpoint",
        os.path.join(run_dir, "grpo", "model"),
        "--name",
        "final",
        *[a for o in EVAL_OVERRIDES for a in ("--set", o)],
    )
    _run(address, env, headers, run_dir, "eval", *final_eval)
    assert "complete, skipping" in _run(address, env, headers, run_dir, "iterative_sft")  # a finished stage skips

    manifests = {}
    for stage in STAGES:
        with open(os.path.join(run_dir, stage, "manifest.json")) as f:
            manifests[stage] = json.load(f)
        assert manifests[stage]["status"] == "complete", stage
        output = manifests[stage]["outputs"].get("model") or manifests[stage]["outputs"]["data"]
        assert os.path.exists(output), (stage, output)
    with open(os.path.join(run_dir, "eval", "final", "eval.json")) as f:
        assert json.load(f)["overall"]["n"] == 60

    # Iterative SFT (paper Table 2 shape): M1, M2 trained on data re-distilled by the previous model.
    sft = manifests["sft"]
    assert sft["inputs"]["train"]["path"].endswith(os.path.join("score", "data"))
    table = {row["model"]: row["pass@1"] for row in sft["metrics"]["table"]}
    assert list(table) == ["reassembled", "M0", "M1", "M2"] and table["M2"] > table["reassembled"], table
    assert "M2" in logs["iterative_sft"] and "Pass@1" in logs["iterative_sft"]
    assert [it["tau"] for it in sft["metrics"]["iterations"]] == [2, 3]
    for t in (1, 2):
        assert os.path.exists(os.path.join(run_dir, "sft", f"M{t}", "redistill", "done.json"))
    # Each E_{t-1} pass generates over every training row (the demo's 512, none rejected on the way).
    assert sft["inputs"]["train"]["rows"] == 512
    assert all(it["error_set"]["generated"] == 512 for it in sft["metrics"]["iterations"])

    # Frozen parts: the vision encoder never changes; MLP init leaves the substitute LLM untouched;
    # re-assembly keeps the reasoning LLM's weights (its embeddings grow by the image tokens).
    parts = os.path.join(run_dir, "tiny_parts")
    vision = load_vision(os.path.join(parts, "vision")).state_dict()
    substitute = load_llm(os.path.join(parts, "substitute_llm"))[0].model.state_dict()
    reasoning = load_llm(os.path.join(parts, "reasoning_llm"))[0].model.state_dict()
    models = {
        name: load_checkpoint(os.path.join(run_dir, name, "model"))[0] for name in ("mlp_init", "reassemble", "sft")
    }
    for name, model in models.items():
        assert _same(model.model.vision_tower.state_dict(), vision), name
    assert _same(models["mlp_init"].model.language_model.state_dict(), substitute)
    reassembled = models["reassemble"].model.language_model.state_dict()
    assert all(torch.equal(reassembled[k], reasoning[k]) for k in reasoning if "embed_tokens" not in k)
    assert not _same(models["sft"].model.language_model.state_dict(), reassembled)  # the demo trains the LLM too

    # GRPO from M_T, fixed seeds: held-out mean reward ends above step 0.
    heldout = manifests["grpo"]["metrics"]["heldout"]
    assert [p["step"] for p in heldout] == [0, 20, 40]
    assert heldout[-1]["heldout_reward"] > heldout[0]["heldout_reward"], heldout
    assert os.path.exists(os.path.join(run_dir, "grpo", "model", "model.safetensors"))
