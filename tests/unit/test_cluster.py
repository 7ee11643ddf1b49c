"""cluster.yaml passes Ray's own launcher validation, and stages ask for the resources its nodes offer."""

import os

import pytest
import yaml

from r1v_ray.config import load_config
from r1v_ray.engines.rollout.actor import worker_resources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_is_valid(cluster):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(cluster))
    with pytest.raises(Exception, match="max_worker"):
        validate_config(fillout_defaults({**cluster, "max_worker": 3}))  # the validation is real


def test_gpu_node_types_autoscale_from_zero_and_dashboard_stays_local(cluster):
    types = cluster["available_node_types"]
    assert types["gpu_rollout"]["min_workers"] == 0 and types["gpu_learner"]["min_workers"] == 0
    assert types["gpu_rollout"]["resources"]["GPU"] > 0 and types["gpu_learner"]["resources"]["GPU"] > 0
    assert "GPU" not in types[cluster["head_node_type"]]["resources"]
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("setup.sh gpu" in c for c in cluster["setup_commands"])


def test_every_node_starts_ray_with_token_authentication(cluster):
    """Regression: GCS, the Ray client and each node's job agent listened on the node IP unauthenticated."""
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # one token on every node


def test_paper_config_lands_on_the_cluster_node_types(cluster):
    cfg = load_config(os.path.join(ROOT, "configs", "paper", "r1v-38b.yaml"))
    types = cluster["available_node_types"]
    bundle = worker_resources(cfg.rollout)
    assert bundle["GPU"] == cfg.rollout.tensor_parallel_size
    rollout_node = next(t for t in types.values() if cfg.rollout.node_resource in t["resources"])
    assert all(rollout_node["resources"].get(k, 0) >= v for k, v in bundle.items())
    assert any(cfg.sft.node_resource in t["resources"] for t in types.values())


def test_every_node_gets_node_local_scratch(cluster):
    """Engines stage checkpoints from the bucket into R1V_SCRATCH_DIR, which the setup mounts on the NVMe."""
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert all("R1V_SCRATCH_DIR=/mnt/nvme/r1v_scratch" in c for c in starts)
    assert any("mount_nvme_scratch.sh" in c for c in cluster["setup_commands"])
    assert os.access(os.path.join(ROOT, "scripts", "mount_nvme_scratch.sh"), os.X_OK)
