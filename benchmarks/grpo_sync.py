"""Weight sync: ObjectStoreSync into a vLLM rollout worker against a raw ray.put + ray.get of the same bytes.

The sync includes what makes it correct (vLLM reload_weights and the prefix / multimodal /
encoder cache resets); the baseline only moves the bytes into an actor. Prints both and the
ratio from one run (target <= 1.3x), for the projector only and for the whole model, at two
sizes: the tiny test model (KB to MB: vLLM's fixed per-reload cost dominates) and a wider one
(hidden 1024, 4 layers: an 8 MB projector and a ~190 MB model, where the bytes do; the
38B model's projector is ~180 MB in bf16).

    .venv/bin/python benchmarks/grpo_sync.py [--repeats 5]     (or benchmarks/grpo.py for both GRPO benchmarks)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import ray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.config import RolloutConfig, TinyModelConfig  # noqa: E402
from r1v_ray.data.synthetic import corpus  # noqa: E402
from r1v_ray.engines.rollout.actor import create_rollout_workers  # noqa: E402
from r1v_ray.engines.sync import ObjectStoreSync  # noqa: E402
from r1v_ray.model import load_checkpoint  # noqa: E402
from r1v_ray.model.factory import write_tiny_checkpoint  # noqa: E402


@ray.remote(num_cpus=1)
class Holder:
    """Stands in for learner rank 0: the transport asks it for its trainable tensors in buckets."""

    def __init__(self, state: dict):
        self.state = state

    def trainable_buckets(self, bucket_bytes: int) -> list:
        return [ray.put(self.state)]


@ray.remote(num_cpus=1)
class Sink:
    def receive(self, state: dict) -> int:
        return sum(t.numel() for t in state.values())


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    wide = TinyModelConfig(
        vision_hidden=256,
        vision_heads=4,
        text_hidden=1024,
        text_layers=4,
        text_heads=16,
        text_kv_heads=4,
        text_intermediate=2816,
    )
    sink = Sink.remote()
    sync = ObjectStoreSync()
    with tempfile.TemporaryDirectory() as work:
        for size, sizes in (("tiny", TinyModelConfig()), ("wide", wide)):
            ckpt = write_tiny_checkpoint(work, corpus, sizes, name=size)
            model, _ = load_checkpoint(ckpt)
            states = {
                "projector": {n: p.detach() for n, p in model.named_parameters() if "multi_modal_projector" in n},
                "full model": {n: p.detach() for n, p in model.named_parameters()},
            }
            (worker,) = create_rollout_workers(
                ckpt, RolloutConfig(device="cpu", max_model_len=512, cpu_kvcache_gib=1), "float32"
            )
            for name, state in states.items():
                nbytes = sum(t.numel() * t.element_size() for t in state.values())
                holder = Holder.remote(state)
                ours = timed(lambda: sync.sync([holder], [worker], 1 << 40), args.repeats)
                raw = timed(lambda: ray.get(sink.receive.remote(ray.put(state))), args.repeats)
                print(
                    f"{size:>4} {name:>10}: {nbytes / 1e6:8.2f} MB  sync {ours * 1e3:8.2f} ms  "
                    f"raw put+get {raw * 1e3:8.2f} ms  ratio {ours / raw:.2f}x (target <= 1.3x)",
                    flush=True,
                )
                ray.kill(holder)
            ray.kill(worker)
    ray.shutdown()


if __name__ == "__main__":
    main()
