"""Weight sync from learners to rollout workers: one interface, two transports.

* `ObjectStoreSync` (CPU, and the cross-node fallback): every learner gathers the
  trainable tensors (ZeRO-3: one parameter at a time), rank 0 puts them in the
  Ray object store in buckets, each rollout engine loads them in place
  (vLLM `reload_weights` plus cache resets).
* `NCCLSync` (GPU): learner rank 0 and every vLLM worker of every rollout engine
  form one NCCL group (vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`, the
  pattern of vLLM's RLHF examples); rank 0 broadcasts tensor by tensor while the
  workers receive and load them.

Only trainable tensors travel (the projector by default: a few MB even at 38B).
"""

from __future__ import annotations

import logging
import time

import ray

logger = logging.getLogger(__name__)
# Set to True once tests/gpu/check_gpu_paths.py runs the NCCL transport (today it checks object_store on GPU).
NCCL_VERIFIED = False
NCCL_UNVERIFIED = (
    "grpo.weight_sync=nccl has not been run by this project's GPU check (tests/gpu/check_gpu_paths.py "
    "verifies the object_store transport only): check on your GPUs that the rollout engines' log-probs "
    "follow the learners' after a sync, or use grpo.weight_sync=object_store"
)


class ObjectStoreSync:
    def setup(self, learners: list, rollout_workers: list) -> None:
        """Nothing to connect: the object store is always there."""

    def sync(self, learners: list, rollout_workers: list, bucket_bytes: int) -> dict:
        start = time.perf_counter()
        refs = ray.get([learner.trainable_buckets.remote(bucket_bytes) for learner in learners])[0]
        tensors = 0
        for ref in refs:  # bucket by bucket: a worker never holds more than one extra bucket
            counts = ray.get([w.update_weights.remote(ref) for w in rollout_workers])
            tensors += counts[0] if counts else 0
        return {"sync_s": time.perf_counter() - start, "tensors": tensors, "buckets": len(refs)}


class NCCLSync:
    def __init__(self, ranks_per_worker: int):
        if not NCCL_VERIFIED:
            logger.warning(NCCL_UNVERIFIED)
        self.ranks_per_worker = ranks_per_worker  # vLLM workers per engine (tensor parallel size)
        self.meta: list = []

    def setup(self, learners: list, rollout_workers: list) -> None:
        """(Re)build the group; called at start and after rollout workers are restarted."""
        host, port = ray.get(learners[0].address.remote())
        world = 1 + self.ranks_per_worker * len(rollout_workers)
        joins = [
            w.init_weight_group.remote(host, port, 1 + i * self.ranks_per_worker, world)
            for i, w in enumerate(rollout_workers)
        ]
        ray.get([learners[0].init_weight_group.remote(host, port, world), *joins])  # all join together
        self.meta = ray.get(learners[0].weight_meta.remote())

    def sync(self, learners: list, rollout_workers: list, bucket_bytes: int) -> dict:
        start = time.perf_counter()
        receives = [w.receive_weights.remote(self.meta) for w in rollout_workers]
        sends = [learner.broadcast_weights.remote() for learner in learners]  # every rank gathers, rank 0 sends
        ray.get(sends + receives)
        return {"sync_s": time.perf_counter() - start, "tensors": len(self.meta), "buckets": len(self.meta)}


def make_sync(kind: str, ranks_per_worker: int = 1):
    if kind == "object_store":
        return ObjectStoreSync()
    if kind == "nccl":
        return NCCLSync(ranks_per_worker)
    raise ValueError(f"grpo.weight_sync={kind!r}: choose object_store (CPU, any cluster) or nccl (GPU)")
