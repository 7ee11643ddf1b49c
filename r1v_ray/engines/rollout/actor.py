"""The rollout engine on Ray: a placement-group-aware actor, and batch generation over a Ray Dataset.

Batch generation uses an actor pool of this same engine rather than
`ray.data.llm`: one engine class serves every stage (per-row repetition
penalty, images, prompt-length rejection, in-place weight updates), and the
CPU and GPU runs differ only in the resources asked for.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from r1v_ray.config import RolloutConfig
from r1v_ray.engines.rollout import make_engine
from r1v_ray.engines.rollout.types import GenerationRequest, GenerationResult, resolve_device
from r1v_ray.engines.rollout.vllm_engine import vllm_env
from r1v_ray.store import stage_in


class RolloutWorker:
    """Holds one engine; Ray actor methods mirror the RolloutEngine interface."""

    def __init__(self, checkpoint: str, cfg: RolloutConfig, dtype: str = "bfloat16"):
        self.checkpoint, self.local = checkpoint, stage_in(checkpoint)  # the local folder the engine holds
        self.engine = make_engine(self.local, cfg, dtype)

    def ready(self) -> str:
        return self.checkpoint

    def placement_group_id(self) -> str | None:
        return ray.get_runtime_context().get_placement_group_id()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self.engine.generate(requests)

    def update_weights(self, named_tensors: dict) -> int:
        self.engine.update_weights(named_tensors)
        return len(named_tensors)

    def load_checkpoint(self, checkpoint: str) -> str | None:
        """Load `checkpoint`'s weights in place; returns None, or (loading nothing) why this engine cannot
        hold it: a model whose config or tokenizer differs needs an engine of its own."""
        local = stage_in(checkpoint)
        reason = checkpoint_mismatch(self.local, local)
        if reason is None:
            self.engine.load_checkpoint(local)
            self.checkpoint, self.local = checkpoint, local
        return reason

    def sequence_logprobs(self, request: GenerationRequest, completion_ids: list[int]) -> list[float]:
        return self.engine.sequence_logprobs(request, completion_ids)

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        return self.engine.init_weight_group(host, port, rank_offset, world_size)

    def receive_weights(self, meta: list) -> int:
        self.engine.receive_weights(meta)
        return len(meta)


def checkpoint_mismatch(held: str, new: str) -> str | None:
    """Why an engine started on local checkpoint `held` cannot load `new`'s weights in place, or None."""
    for name in ("config.json", "tokenizer.json"):
        a, b = (os.path.join(d, name) for d in (held, new))
        if not os.path.exists(a) or not os.path.exists(b):
            return f"{name} missing in {held if not os.path.exists(a) else new}"
        with open(a) as fa, open(b) as fb:
            if json.load(fa) != json.load(fb):
                return f"{name} differs"
    return None


def worker_resources(cfg: RolloutConfig) -> dict:
    """One worker's bundle: CPUs always, GPUs (times tensor parallel) on CUDA."""
    bundle = {"CPU": cfg.num_cpus_per_worker}
    if resolve_device(cfg.device) == "cuda":
        bundle["GPU"] = cfg.num_gpus_per_worker * cfg.tensor_parallel_size
    if cfg.node_resource:
        bundle[cfg.node_resource] = 1
    return bundle


def worker_runtime_env(cfg: RolloutConfig) -> dict:
    """vLLM reads its settings from the environment at import, so actors get them at start."""
    return {"env_vars": vllm_env(cfg) if cfg.backend == "vllm" else {}}


def rollout_placement_group(cfg: RolloutConfig, name: str = "rollout") -> PlacementGroup:
    """The rollout workers' own placement group, one bundle per worker."""
    pg = placement_group([worker_resources(cfg)] * cfg.num_workers, strategy="PACK", name=name)
    ray.get(pg.ready())
    return pg


def create_rollout_workers(
    checkpoint: str, cfg: RolloutConfig, dtype: str = "bfloat16", pg: PlacementGroup | None = None, wait: bool = True
) -> list:
    """Start `cfg.num_workers` engine actors (in `pg` when given) and, with `wait`, wait until they are loaded
    (else the caller waits: `wait_until_loaded`)."""
    bundle = worker_resources(cfg)
    actors = []
    for i in range(cfg.num_workers):
        options = dict(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0),
            resources={k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
            runtime_env=worker_runtime_env(cfg),
        )
        if pg is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        actors.append(ray.remote(RolloutWorker).options(**options).remote(checkpoint, cfg, dtype))
    return wait_until_loaded(actors) if wait else actors


def wait_until_loaded(actors: list) -> list:
    """`actors` once every engine has loaded (an engine that failed to start raises here)."""
    ray.get([a.ready.remote() for a in actors])
    return actors


class HeldWorkers:
    """Rollout workers a stage keeps through all its generation passes: `serving(model)` gives workers that
    hold `model`, loading its weights in place (no engine start) where its config and tokenizer are the held
    engine's, else starting new workers. `close()` (or leaving the `with` block) stops them."""

    def __init__(self, cfg: RolloutConfig, dtype: str, name: str):
        self.cfg, self.dtype, self.name = cfg, dtype, name
        self.workers: list = []
        self.pg: PlacementGroup | None = None
        self.model: str | None = None
        self.loads = {"started": 0, "in_place": 0}  # how each model got to the workers

    def serving(self, model: str) -> list:
        if self.workers and model != self.model:
            reasons = ray.get([w.load_checkpoint.remote(model) for w in self.workers])
            if any(reasons):  # left as they were: this model needs engines of its own
                self.close()
            else:
                self.loads["in_place"] += 1
        if not self.workers:
            self.pg = rollout_placement_group(self.cfg, self.name)
            self.workers = create_rollout_workers(model, self.cfg, self.dtype, self.pg)
            self.loads["started"] += 1
        self.model = model
        return self.workers

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
        if self.pg is not None:
            remove_placement_group(self.pg)
        self.workers, self.pg, self.model = [], None, None

    def __enter__(self) -> HeldWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BatchGenerator:
    """Ray Data callable class: rows in, rows plus generations out, through `generate`."""

    build_request: Callable[[dict], GenerationRequest]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        keys = list(batch)
        rows = [{k: batch[k][i] for k in keys} for i in range(len(batch[keys[0]]))] if keys else []
        requests, errors = [], {}
        for i, row in enumerate(rows):
            try:
                requests.append(self.build_request(row))
            except Exception as exc:  # a row that cannot become a request is rejected, not dropped
                errors[i] = f"bad request: {type(exc).__name__}: {exc}"
                requests.append(None)
        results = self.generate([r for r in requests if r is not None])
        it = iter(results)
        out_texts, out_tokens, out_err, out_prompt = [], [], [], []
        for i, req in enumerate(requests):
            res = None if req is None else next(it)
            err = errors.get(i) if res is None else res.error
            out_err.append(err)
            out_prompt.append(0 if res is None else res.prompt_tokens)
            out_texts.append([] if res is None else [c.text for c in res.completions])
            out_tokens.append([] if res is None else [len(c.token_ids) for c in res.completions])
        batch = dict(batch)
        batch["completions"] = _list_column(out_texts)
        batch["completion_tokens"] = _list_column(out_tokens)
        batch["prompt_tokens"] = np.array(out_prompt)
        batch["error"] = np.array(out_err, dtype=object)
        return batch


class _EngineUDF(_BatchGenerator):
    """One engine per pool actor."""

    def __init__(
        self, checkpoint: str, cfg: RolloutConfig, dtype: str, build_request: Callable[[dict], GenerationRequest]
    ):
        self.engine = make_engine(checkpoint, cfg, dtype)
        self.build_request = build_request

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self.engine.generate(requests)


class WorkerClient:
    """`generate` on running rollout workers (`RolloutWorker` actors): each call goes to one of them, in turn
    from a random start, so that the forwarders of a pool share the workers."""

    def __init__(self, workers: list):
        self.workers = workers
        self.turn = random.randrange(len(workers))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        worker = self.workers[self.turn % len(self.workers)]
        self.turn += 1
        return ray.get(worker.generate.remote(requests))


class _WorkersUDF(_BatchGenerator):
    """No engine of its own: batches go to running rollout workers (`WorkerClient`)."""

    def __init__(self, workers: list, build_request: Callable[[dict], GenerationRequest]):
        self.client, self.build_request = WorkerClient(workers), build_request

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self.client.generate(requests)


def pool_options(cfg: RolloutConfig, workers: list | None = None) -> dict:
    """`map_batches` options of a pool of engine actors, or (with `workers`) of forwarders to running workers,
    one per worker, that hold no resources: the workers' own bundles do."""
    if workers:
        return {"compute": ray.data.ActorPoolStrategy(size=len(workers)), "num_cpus": 0}
    bundle = worker_resources(cfg)
    return {
        "compute": ray.data.ActorPoolStrategy(size=cfg.num_workers),
        "num_cpus": bundle["CPU"],
        "num_gpus": bundle.get("GPU", 0),
        "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")} or None,
        "runtime_env": worker_runtime_env(cfg),
    }


def _list_column(values: list[list]) -> np.ndarray:
    """A 1-D object array of lists: a variable-length list column. (np.array of equal-length lists would be
    2-D, which Ray Data stores as a fixed-shape tensor that batches with another n cannot join.)"""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def generate_dataset(
    ds: ray.data.Dataset,
    checkpoint: str,
    cfg: RolloutConfig,
    build_request: Callable[[dict], GenerationRequest],
    dtype: str = "bfloat16",
    batch_size: int | None = None,
    workers: list | None = None,
) -> ray.data.Dataset:
    """Every row plus `completions`, `completion_tokens`, `prompt_tokens` and `error` (None when generated).

    Rows whose request was rejected keep their place with the reason in `error`,
    so the caller can route them to `rejected`. `workers`: running `RolloutWorker` actors that already hold
    `checkpoint`'s weights generate, instead of a pool of new engines (no engine start, no second claim on
    the accelerators).
    """
    udf, args = (
        (_WorkersUDF, (workers, build_request)) if workers else (_EngineUDF, (checkpoint, cfg, dtype, build_request))
    )
    return ds.map_batches(
        udf,
        fn_constructor_args=args,
        batch_size=batch_size or cfg.batch_size,
        batch_format="numpy",
        **pool_options(cfg, workers),
    )
