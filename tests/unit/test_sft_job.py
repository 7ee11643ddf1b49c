"""An SFT run's settings are the `sft` config section (YAML / --set), carried to each Ray Train worker as
plain values; the worker's recipe hands them to the learner. No Ray here: the Train context is faked."""

import json
import os
from types import SimpleNamespace

import torch

from r1v_ray.config import load_config
from r1v_ray.data.synthetic import write_split
from r1v_ray.sft.trainer import SFTJob, job_from_dict, job_to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETS = ["sft.max_grad_norm=0.25", "sft.zero_stage=3", "sft.weight_decay=0.5", "sft.num_workers=1", "sft.seed=7"]


def _job(data_uri: str, out: str) -> SFTJob:
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "tiny.yaml"), SETS)
    return SFTJob("init", data_uri, out, 1e-3, sft=cfg.sft, stage="t", epochs=2, trainable_prefixes=["projector"])


def test_the_job_travels_to_workers_as_plain_values_and_comes_back_whole(tmp_path):
    job = _job("data", str(tmp_path))
    sent = json.loads(json.dumps(job_to_dict(job)))  # what Ray Train's train_loop_config can carry
    back = job_from_dict(sent)
    assert back == job
    assert back.sft.max_grad_norm == 0.25 and back.sft.mlp_init_stages == job.sft.mlp_init_stages


def test_the_recipe_hands_the_learner_the_configs_settings(tmp_path, monkeypatch):
    import ray.train

    import r1v_ray.engines.learner as learner_module
    from r1v_ray.sft.recipe import SFTRecipe

    data = str(tmp_path / "train")
    write_split(data, 24, seed=1, image_size=16)
    built = {}

    class Learner:
        def __init__(self, *args, **kwargs):
            built.update(args=args, kwargs=kwargs)
            self.model = torch.nn.Linear(2, 2)

        def start(self, optimizer, scheduler):
            built["optimizer"] = optimizer

    monkeypatch.setattr(learner_module, "LearnerEngine", Learner)
    context = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1, get_local_rank=lambda: 0)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    job = job_from_dict(job_to_dict(_job(data, str(tmp_path / "out"))))
    recipe = SFTRecipe(job)
    kwargs = built["kwargs"]
    assert built["args"] == ("init", ["projector"])
    assert kwargs["max_grad_norm"] == 0.25 and kwargs["zero_stage"] == 3 and kwargs["use_gpu"] is False
    assert built["optimizer"].param_groups[0]["weight_decay"] == 0.5
    assert recipe.shard.seed == 7 and recipe.total_steps == 2 * recipe.shard.steps_per_epoch
