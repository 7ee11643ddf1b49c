"""End to end: a local head (`ray start --head`, dashboard on 127.0.0.1), the stages submitted with
`ray job submit`, each job SUCCEEDED according to the dashboard's job API, outputs on disk."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest
import requests

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Small but complete: every stage runs its real code path (MLP init with one sub-stage: the three of the
# demo config run the same code, and the pipeline test runs them all).
OVERRIDES = [
    "sft.mlp_init_stages=[{name: full, learning_rate: 2.0e-3}]",
    "data.synthetic.n_train=64", "data.synthetic.n_test=10", "sft.iterations=1", "sft.taus=[2]",
    "sft.iteration_lrs=[5.0e-4]", "sft.epochs=1", "sft.error_set_max_tokens=24", "eval.runs=1", "eval.max_tokens=24",
    "distill.max_tokens=24", "grpo.steps=2", "grpo.prompts_per_step=4", "grpo.max_completion_tokens=24",
    "grpo.eval_prompts=4", "grpo.eval_every_steps=2", "grpo.checkpoint_every_steps=2",
]
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
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--num-cpus=8", "--include-dashboard=true", f"--temp-dir={tmp}"], check=True, env=env,
                   capture_output=True, timeout=180)
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
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", ROOT, "--no-wait", "--",
           sys.executable, f"jobs/{script}.py", "--config", "configs/demo/tiny.yaml", "--set", f"run_dir={run_dir}",
           *sets, *extra]
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


def test_stages_run_as_ray_jobs(head, tmp_path):
    address, env, headers = head
    assert requests.get(f"{address}/api/jobs/", timeout=10).status_code == 401  # no token, no job API
    run_dir = str(tmp_path / "run")
    for script, extra in (("distill", ()), ("score", ()), ("mlp_init", ()), ("reassemble", ()), ("iterative_sft", ()),
                          ("grpo", ()), ("eval", ("--checkpoint", os.path.join(run_dir, "grpo", "model"), "--name", "final"))):
        job_id = _submit(address, env, run_dir, script, *extra)
        info = _wait(address, headers, job_id)
        logs = requests.get(f"{address}/api/jobs/{job_id}/logs", headers=headers, timeout=10).json().get("logs", "")
        assert info["status"] == "SUCCEEDED", f"{script}: {info.get('message')}\n{logs[-3000:]}"
    for stage in STAGES:
        with open(os.path.join(run_dir, stage, "manifest.json")) as f:
            manifest = json.load(f)
        assert manifest["status"] == "complete", stage
        output = manifest["outputs"].get("model") or manifest["outputs"]["data"]
        assert os.path.exists(output), (stage, output)
    with open(os.path.join(run_dir, "sft", "manifest.json")) as f:  # M1 trained on data re-distilled by M0
        assert os.path.exists(os.path.join(run_dir, "sft", "M1", "redistill", "done.json"))
        assert json.load(f)["inputs"]["train"]["path"].endswith(os.path.join("score", "data"))
    with open(os.path.join(run_dir, "eval", "final", "eval.json")) as f:
        assert json.load(f)["overall"]["n"] == 10
