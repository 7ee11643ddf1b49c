"""StageMetrics' trackers without Ray: TensorBoard by default, step-aligned with metrics.jsonl through a
resume; the manifest's tracking section chosen; missing optional backends named with their extra; scrubbing."""

from __future__ import annotations

import json

import pytest

from r1v_ray.config import R1VConfig, TrackingConfig, to_dict
from r1v_ray.metrics import StageMetrics, read_jsonl, truncate_after
from r1v_ray.tracking import Context, flatten, scrub


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_by_default_and_step_aligned_through_a_resume(tmp_path):
    path = str(tmp_path / "sft" / "metrics.jsonl")
    first = StageMetrics("sft/stage1", path)
    for step in range(1, 6):
        first.log(step, loss=1.0 / step, lr=1e-3, note="text is not a scalar")
    first.close()
    truncate_after(path, 3)  # the resumed run recomputes steps 4 and 5
    again = StageMetrics("sft/stage1", path)
    for step in range(4, 7):
        again.log(step, loss=2.0 / step, lr=1e-3)
    again.close()
    records = read_jsonl(path)
    scalars = _scalars(str(tmp_path / "sft" / "tensorboard" / "sft" / "stage1"))
    assert set(scalars) == {"loss", "lr"}
    assert [s for s, _ in scalars["loss"]] == [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in records])  # steps 4, 5 rewritten


def test_the_manifests_tracking_section_is_used(tmp_path):
    cfg = R1VConfig(run_dir=str(tmp_path / "myrun"))
    cfg.tracking.tensorboard = False
    stage_dir = tmp_path / "myrun" / "grpo"
    stage_dir.mkdir(parents=True)
    (stage_dir / "manifest.json").write_text(json.dumps({"stage": "grpo", "config": to_dict(cfg)}))
    metrics = StageMetrics("grpo", str(stage_dir / "metrics.jsonl"))
    metrics.log(1, reward=0.5)
    assert metrics.trackers == [] and not (stage_dir / "tensorboard").exists()
    ctx = Context("grpo", str(stage_dir / "metrics.jsonl"))
    assert ctx.run_name == "myrun/grpo" and ctx.params["grpo.group_size"] == "8"
    assert {"config.yaml", "manifest.json"} == set(ctx.artifacts)


def test_a_missing_backend_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(
        ImportError, match=r"tracking.wandb=true needs the wandb package: pip install 'r1v_ray\[tracking\]'"
    ):
        StageMetrics("score", str(tmp_path / "metrics.jsonl"), TrackingConfig(tensorboard=False, wandb=True))


def test_scrub_masks_url_credentials_and_secret_values():
    tree = {
        "judge": {"base_url": "https://me:hunter2@proxy.local/v1", "api_key_env": "OPENAI_API_KEY"},
        "serve": {"token_env": "R1V_SERVE_TOKEN", "token": "abc123"},
        "urls": ["s3://AKIA:xyz@bucket/run"],
    }
    clean = scrub(tree)
    text = json.dumps(clean)
    assert "hunter2" not in text and "abc123" not in text and "xyz@" not in text
    assert clean["judge"]["api_key_env"] == "OPENAI_API_KEY" and clean["serve"]["token_env"] == "R1V_SERVE_TOKEN"
    assert flatten(clean)["judge.base_url"] == "https://[redacted]@proxy.local/v1"
