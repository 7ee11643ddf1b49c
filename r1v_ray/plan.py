"""The pipeline's plan, without running anything: stages in order, what each reads and writes in the run
directory, the Ray resources it asks for, and whether a reachable cluster's nodes can host them.

`jobs/pipeline.py --dry-run` prints it. Nothing here writes: dataset paths are computed, not created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from r1v_ray.config import R1VConfig
from r1v_ray.engines.rollout.actor import worker_resources
from r1v_ray.run_dir import RunLayout
from r1v_ray.stages import STAGES


@dataclass
class StagePlan:
    name: str
    reads: list[str]
    writes: list[str]
    phases: dict[str, list[dict]] = field(default_factory=dict)  # phase -> the Ray bundles it holds at once
    notes: str = ""


def _datasets(cfg: R1VConfig) -> tuple[str, str]:
    if cfg.data.source == "parquet":
        return cfg.data.train_path or "<data.train_path unset>", cfg.data.test_path or "<data.test_path unset>"
    layout = RunLayout(cfg.run_dir)
    return layout.synthetic("train"), layout.synthetic("test")


def _trainer(cfg: R1VConfig) -> list[dict]:
    s = cfg.sft
    bundle = {"CPU": 1.0, **({"GPU": 1.0} if s.use_gpu else {}), **({s.node_resource: 1.0} if s.node_resource else {})}
    return [bundle] * s.num_workers


def _judge(cfg: R1VConfig) -> list[dict]:
    return [{"CPU": 0.5}] * cfg.judge.num_workers if cfg.judge.kind == "openai" else []


def stage_plans(cfg: R1VConfig) -> list[StagePlan]:
    train, test = _datasets(cfg)
    run = RunLayout(cfg.run_dir).path
    rollout = [worker_resources(cfg.rollout)] * cfg.rollout.num_workers
    g = cfg.grpo
    learner = {"CPU": 1.0, **({"GPU": 1.0} if g.use_gpu else {}), **({g.node_resource: 1.0} if g.node_resource else {})}
    scored = run("score", "data")
    subs = ", ".join(s.name for s in cfg.sft.mlp_init_stages)
    assessed = any(s.score_column for s in cfg.sft.mlp_init_stages)  # MLP-init runs the assessment first
    iterations = " ".join(f"M{t}" for t in range(cfg.sft.iterations + 1))
    plans = [
        StagePlan("mlp_init", [train, test], ([run("mlp_init", "assess")] if assessed else [])
                  + [run("mlp_init", s.name) for s in cfg.sft.mlp_init_stages]
                  + [run("mlp_init", "model"), run("mlp_init", "eval")],
                  {**({"assess": _judge(cfg)} if assessed else {}), "train": _trainer(cfg), "evaluate": rollout},
                  f"sub-stages: {subs}" + ("; subsets by the judge's query assessment" if assessed else "")),
        StagePlan("reassemble", [run("mlp_init", "model"), cfg.model.llm_path or "<tiny reasoning LLM>"],
                  [run("reassemble", "model")], {}, "one process on the driver"),
        StagePlan("distill", [train, run("reassemble", "model")], [run("distill", "data"), run("distill", "rejected")],
                  {"generate": rollout + _judge(cfg)}, f"self-distillation by the re-assembled model; judge: {cfg.judge.kind}"),
        StagePlan("score", [run("distill", "data")], [scored, run("score", "rejected")], {"score": _judge(cfg)}),
        StagePlan("sft", [run("reassemble", "model"), scored, test],
                  [run("sft", m) for m in iterations.split()] + [run("sft", "eval"), run("sft", "model")],
                  {"train": _trainer(cfg), "evaluate, error sets, re-distill": rollout + _judge(cfg)}, iterations),
        StagePlan("grpo", [run("sft", "model"), scored, test],
                  [run("grpo", "data"), run("grpo", "checkpoints"), run("grpo", "model"), run("grpo", "eval")],
                  {"train": [learner] * g.num_learners + ([] if g.colocate else rollout)},
                  f"{g.steps} steps x {g.prompts_per_step} prompts x {g.group_size}; weight sync {g.weight_sync}"),
    ]  # fmt: skip
    by_name = {plan.name: plan for plan in plans}
    return [by_name[stage] for stage in STAGES]  # in the pipeline's order


def fits(bundles: list[dict], nodes: list[dict]) -> str | None:
    """None if every bundle fits on some node and the total within the cluster, else why not (now: an
    autoscaling cluster may add nodes of its types)."""
    for bundle in bundles:
        if not any(all(node.get(k, 0) >= v for k, v in bundle.items()) for node in nodes):
            return f"no node has {bundle}"
    total = {k: sum(n.get(k, 0) for n in nodes) for n in nodes for k in n}
    need = {k: sum(b.get(k, 0) for b in bundles) for b in bundles for k in b}
    short = {k: v for k, v in need.items() if v > total.get(k, 0)}
    return f"needs {short} at once, the cluster has { ({k: total.get(k, 0) for k in short}) }" if short else None


def format_plan(cfg: R1VConfig, nodes: list[dict] | None = None) -> str:
    lines = [f"run directory: {cfg.run_dir}", ""]
    for i, stage in enumerate(stage_plans(cfg), 1):
        lines.append(f"{i}. {stage.name}" + (f"  ({stage.notes})" if stage.notes else ""))
        lines += [f"     reads  {path}" for path in stage.reads]
        lines += [f"     writes {path}" for path in stage.writes]
        if not stage.phases:
            lines.append("     asks   no Ray resources")
        for phase, bundles in stage.phases.items():
            need: dict[str, float] = {}
            for bundle in bundles:
                for k, v in bundle.items():
                    need[k] = need.get(k, 0) + v
            lines.append(f"     asks   {phase}: {len(bundles)} bundles, {need or 'nothing'}")
            if nodes is not None:
                problem = fits(bundles, nodes)
                lines.append(
                    f"            on the cluster now: {'fits' if problem is None else 'DOES NOT FIT: ' + problem}"
                )
    return "\n".join(lines)


def cluster_nodes() -> list[dict] | None:
    """The alive nodes' resources of the cluster RAY_ADDRESS names, or None when none is set."""
    if not os.environ.get("RAY_ADDRESS"):
        return None
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
