"""End to end on a cluster of three nodes on one machine: a head and two workers started with `ray start` on
127.0.0.1 (custom resources `rollout` and `learner`, own temp dirs and scratch folders, token authentication
on), the run directory in a local S3 server (moto). The demo pipeline runs through `ray job submit` with
run_dir=s3://...; the rollout and learner actors land on the nodes their `node_resource` names (Ray's state
API). Mid-GRPO, after its first checkpoint, the whole cluster is lost: every process killed, every scratch
folder deleted. A new cluster gets the same submission: the finished stages skip, and GRPO resumes from its
checkpoint in the bucket at that step. Nothing of the run exists outside the bucket and the scratch folders.

It is also the demo's proof with fixed seeds, unchanged (configs/demo/tiny.yaml: the pretrained tiny zoo,
512 training rows, 1000 test rows, T = 2, re-distillation before each iteration, 120 GRPO steps): the
paper's effects in miniature hold, GRPO's paired-bootstrap CI over M2 above 0 among them
(tests/e2e/paper_effects.py, read from the bucket), frozen parts stay bit-identical, and GRPO's held-out
reward ends above step 0."""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import torch
from local_cluster import LocalCluster, Node
from paper_effects import assert_paper_effects
from ray._private.authentication_test_utils import reset_auth_token_state  # Ray's own test helper
from s3_server import moto_s3

from r1v_ray import store
from r1v_ray.config import load_config
from r1v_ray.data import synthetic
from r1v_ray.metrics import read_jsonl
from r1v_ray.model import load_checkpoint
from r1v_ray.model.factory import load_llm, load_vision
from r1v_ray.model.zoo import zoo_parts
from r1v_ray.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
BUCKET = "r1v-e2e"
RUN_DIR = f"s3://{BUCKET}/run"
PLACEMENT = ["rollout.node_resource=rollout", "grpo.node_resource=learner", "sft.node_resource=learner"]
DEMO = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"))
INTERRUPT_AT = DEMO.grpo.checkpoint_every_steps  # the demo's first GRPO checkpoint


def _nodes(root) -> list[Node]:
    return [
        Node("head", root / "head", {"head": 1}, 4, (22000, 22999)),
        Node("rollout", root / "rollout", {"rollout": 4}, 4, (23000, 23999)),
        Node("learner", root / "learner", {"learner": 4}, 4, (24000, 24999)),
    ]


def _submit(cluster: LocalCluster) -> str:
    sets = [a for s in [f"run_dir={RUN_DIR}", *PLACEMENT] for a in ("--set", s)]
    cmd = [RAY, "job", "submit", "--address", cluster.address, "--working-dir", ROOT, "--no-wait", "--"]
    cmd += [sys.executable, "jobs/pipeline.py", "--config", "configs/demo/tiny.yaml", *sets]
    # The submitting side names the token by file; the job's runtime_env carries no secret.
    out = subprocess.run(cmd, check=True, env=cluster.env, capture_output=True, text=True, timeout=300).stdout
    return next(line.split("'")[1] for line in out.splitlines() if "submitted successfully" in line)


def _job(cluster: LocalCluster, job_id: str) -> dict:
    return requests.get(f"{cluster.address}/api/jobs/{job_id}", headers=cluster.headers(), timeout=10).json()


def _logs(cluster: LocalCluster, job_id: str) -> str:
    url = f"{cluster.address}/api/jobs/{job_id}/logs"
    return requests.get(url, headers=cluster.headers(), timeout=10).json().get("logs", "")


def _placement(cluster: LocalCluster) -> dict[str, set[str]]:
    """{actor class: the custom resources of the nodes its live actors run on}, from Ray's state API."""
    from ray.util.state import list_actors

    resources = {
        n.node_id: {k for k in n.resources_total if k in ("head", "rollout", "learner")} for n in cluster.alive_nodes()
    }
    out: dict[str, set[str]] = {}
    for cls in ("RolloutWorker", "LearnerWorker"):
        actors = list_actors(address=cluster.address, filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])
        out[cls] = set().union(*(resources.get(a.node_id, {"?"}) for a in actors)) if actors else set()
    return out


def _run_until_checkpoint(cluster: LocalCluster, s3, job_id: str, timeout: float = 2700) -> dict:
    """Wait for GRPO's step-INTERRUPT_AT checkpoint in the bucket; the actors' placement seen meanwhile (once
    both kinds are up: each state-API read costs the 2-core host CPU the pipeline needs)."""
    latest = f"{RUN_DIR}/grpo/checkpoints/latest.json"
    placement: dict = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(cluster, job_id)
        assert info["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"), (info, _logs(cluster, job_id)[-3000:])
        if not placement:
            seen = _placement(cluster)
            placement = seen if seen["RolloutWorker"] and seen["LearnerWorker"] else {}
        if store.is_file(latest) and store.read_json(latest)["step"] >= INTERRUPT_AT:
            return placement
        time.sleep(2)
    raise TimeoutError("GRPO's first checkpoint did not appear")


def _wait(cluster: LocalCluster, job_id: str, timeout: float = 2700) -> tuple[dict, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(cluster, job_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info, _logs(cluster, job_id)
        time.sleep(2)
    raise TimeoutError(job_id)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stray_paths(clusters: list[LocalCluster]) -> list[str]:
    """Folders a stage would have made outside the bucket and scratch, in the nodes' temp dirs (the jobs'
    working directories are there): `s3:` (a URI taken for a local path) or `runs` (a relative run_dir)."""
    roots = [node.temp_dir for cluster in clusters for node in cluster.nodes]
    return [os.path.join(d, n) for root in roots for d, dirs, _ in os.walk(root) for n in dirs if n in ("s3:", "runs")]


@pytest.fixture
def auth_state():
    """Ray's cached auth mode and token are read again after the test, when its variables are gone."""
    yield
    reset_auth_token_state()


@pytest.fixture
def short_root():
    """Cluster roots under a short path: Ray's AF_UNIX socket paths (temp dir + session + socket name) must
    stay within 107 bytes, which pytest's tmp_path exceeds."""
    root = Path(tempfile.mkdtemp(prefix="r1v-e2e-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_pipeline_on_three_nodes_survives_losing_its_cluster(tmp_path, short_root, auth_state, monkeypatch):
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    top_level = set(os.listdir(ROOT))
    with moto_s3(BUCKET) as s3:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "R1V_SCRATCH_DIR")}
        # The zoo is built once by the first cluster's job and found by the second's (and by this process).
        zoo = str(short_root / "zoo")
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), R1V_ZOO_CACHE=zoo)
        for k, v in (("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN_PATH", str(token)), ("R1V_ZOO_CACHE", zoo)):
            monkeypatch.setenv(k, v)  # this process's state-API calls carry the token too
        reset_auth_token_state()  # Ray caches the auth mode it first read (disabled, earlier in this process)
        first = LocalCluster(short_root / "a", env)
        first.start(_nodes(short_root / "a"))
        try:
            assert requests.get(f"{first.address}/api/jobs/", timeout=10).status_code == 401  # no token, no jobs
            job = _submit(first)
            placement = _run_until_checkpoint(first, s3, job)
        finally:
            first.stop()  # the cluster is lost mid-GRPO
        assert placement == {"RolloutWorker": {"rollout"}, "LearnerWorker": {"learner"}}, placement
        for node in first.nodes:
            if node.name != "head":  # the engines' nodes staged checkpoints there
                assert os.listdir(node.scratch), f"{node.name} staged nothing in its scratch folder"
            shutil.rmtree(node.scratch)

        second = LocalCluster(short_root / "b", env)
        second.start(_nodes(short_root / "b"))
        try:
            info, logs = _wait(second, _submit(second))
        finally:
            second.stop()
        assert info["status"] == "SUCCEEDED", f"{info.get('message')}\n{logs[-4000:]}"
        for stage in STAGES[:-1]:
            assert f"[{stage}] complete, skipping" in logs, stage
        assert f"[grpo] resuming at step {INTERRUPT_AT} from {RUN_DIR}/grpo/checkpoints/step-{INTERRUPT_AT}" in logs

        manifests = {stage: store.read_json(f"{RUN_DIR}/{stage}/manifest.json") for stage in STAGES}
        assert all(m["status"] == "complete" for m in manifests.values())
        assert [m["attempts"] for m in manifests.values()] == [1, 1, 1, 1, 1, 2]
        steps = [r["step"] for r in read_jsonl(f"{RUN_DIR}/grpo/metrics.jsonl")]
        assert steps == list(range(DEMO.grpo.steps + 1)), steps  # resumed at the exact step: none lost or repeated
        assert store.read_json(f"{RUN_DIR}/grpo/eval/eval.json")["overall"]["n"] == DEMO.data.synthetic.n_test
        assert store.is_file(f"{RUN_DIR}/report/report.md")

        # Iterative SFT (paper Table 2 shape): M1, M2 trained on data re-distilled by the previous model.
        sft = manifests["sft"]
        assert sft["inputs"]["train"]["path"] == f"{RUN_DIR}/score/data" and sft["inputs"]["train"]["rows"] == 512
        table = {row["model"]: row["pass@1"] for row in sft["metrics"]["table"]}
        assert list(table) == ["reassembled", "M0", "M1", "M2"] and table["M2"] > table["reassembled"], table
        assert [it["tau"] for it in sft["metrics"]["iterations"]] == [4, 5]
        assert all(it["error_set"]["generated"] == 512 for it in sft["metrics"]["iterations"])
        for t in (1, 2):
            assert store.is_file(f"{RUN_DIR}/sft/M{t}/redistill/done.json")

        # Frozen parts: the vision encoder never changes; MLP init leaves the substitute LLM untouched;
        # re-assembly keeps the reasoning LLM's weights (its embeddings grow by the image tokens).
        monkeypatch.setenv("R1V_SCRATCH_DIR", str(tmp_path / "inspect"))  # this process's copies
        vision_path, substitute_path, reasoning_path = zoo_parts(DEMO.model.tiny, DEMO.model.zoo, synthetic)
        vision = load_vision(vision_path).state_dict()
        substitute = load_llm(substitute_path)[0].model.state_dict()
        reasoning = load_llm(reasoning_path)[0].model.state_dict()
        models = {name: load_checkpoint(f"{RUN_DIR}/{name}/model")[0] for name in ("mlp_init", "reassemble", "sft")}
        for name, model in models.items():
            assert _same(model.model.vision_tower.state_dict(), vision), name
        assert _same(models["mlp_init"].model.language_model.state_dict(), substitute)
        reassembled = models["reassemble"].model.language_model.state_dict()
        assert all(torch.equal(reassembled[k], reasoning[k]) for k in reasoning if "embed_tokens" not in k)
        assert not _same(models["sft"].model.language_model.state_dict(), reassembled)  # the demo trains the LLM

        # GRPO from M_T, fixed seeds: held-out mean reward ends above step 0 (its points survive the resume).
        heldout = manifests["grpo"]["metrics"]["heldout"]
        every = DEMO.grpo.eval_every_steps
        assert [p["step"] for p in heldout] == list(range(0, DEMO.grpo.steps + 1, every))
        assert heldout[-1]["heldout_reward"] > heldout[0]["heldout_reward"], heldout
        assert store.is_file(f"{RUN_DIR}/grpo/model/model.safetensors")

        # The paper's effects, with margins, GRPO's CI over M_T above 0 among them (demo on an AMD host: +1.80
        # [+0.50, +3.06] on 1000 test rows, skipping solved prompts; +1.62 [+0.56, +2.72] without; an earlier
        # host before the judge change: +2.30 [+1.13, +3.50] on 600: README), and its held-out length rising.
        assert_paper_effects(RUN_DIR)

    # Nothing of the run outside the bucket and the scratch folders: not in the repository, not in the jobs'
    # working directories (Ray's package cache, under the nodes' temp dirs).
    assert set(os.listdir(ROOT)) == top_level
    assert _stray_paths([first, second]) == []
