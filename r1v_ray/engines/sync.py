"""Weight sync from learners to rollout workers: one interface, transports behind it.

ObjectStoreSync moves buckets of HF-named tensors through the Ray object store
(CPU, and the cross-node fallback); the rollout engine loads them in place
(`update_weights`: vLLM `reload_weights` plus cache resets).
"""

from __future__ import annotations

import time

import ray


class ObjectStoreSync:
    def sync(self, bucket_refs: list, rollout_workers: list) -> dict:
        """Apply each bucket on every rollout worker, bucket by bucket; returns seconds and tensor count."""
        start = time.perf_counter()
        tensors = 0
        for ref in bucket_refs:
            counts = ray.get([w.update_weights.remote(ref) for w in rollout_workers])
            tensors += counts[0] if counts else 0
        return {"sync_s": time.perf_counter() - start, "tensors": tensors, "buckets": len(bucket_refs)}


def make_sync(kind: str):
    if kind == "object_store":
        return ObjectStoreSync()
    raise ValueError(f"grpo.weight_sync={kind!r}: available on this build: object_store "
                     "(the NCCL broadcast transport for GPU clusters is not implemented yet)")
