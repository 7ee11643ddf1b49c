import os

import pytest

from r1v_ray.config import ConfigError, R1VConfig, dump_config, load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
PAPER = os.path.join(CONFIGS, "paper", "r1v-38b.yaml")


def test_defaults_are_the_papers():
    cfg = load_config()
    assert isinstance(cfg, R1VConfig)
    assert cfg.sft.weight_decay == 0.05 and cfg.sft.warmup_ratio == 0.03
    assert [s.learning_rate for s in cfg.sft.mlp_init_stages] == [2e-4, 4e-5, 4e-5]
    assert cfg.sft.taus == [2, 3, 4, 5] and cfg.sft.iterations == 4
    assert cfg.grpo.learning_rate == 1e-6 and cfg.grpo.group_size == 8 and cfg.grpo.temperature == 1.0
    assert cfg.grpo.tau == 5 and cfg.eval.runs == 5 and cfg.eval.max_tokens == 65536
    assert cfg.model.trainable_prefixes == ["projector"]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run_dir: /tmp/x\nsft:\n  global_batch_size: 16\n  iterations: 2\n  taus: [2, 3]\nmodel:\n  tiny:\n    text_hidden: 256\n"
    )
    cfg = load_config(
        path, ["sft.global_batch_size=8", "grpo.clip_eps_high=0.28", "model.dtype=float32", "judge.base_url=null"]
    )
    assert cfg.run_dir == "/tmp/x"
    assert cfg.sft.global_batch_size == 8 and cfg.sft.taus == [2, 3]
    assert cfg.model.tiny.text_hidden == 256
    assert cfg.grpo.clip_eps_high == 0.28
    assert cfg.judge.base_url is None
    # Round trip through YAML gives the same config.
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_int_accepted_for_float():
    assert load_config(None, ["grpo.learning_rate=1"]).grpo.learning_rate == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sft.global_batchsize=4", "did you mean 'global_batch_size'"),
        ("sfft.zero_stage=1", "did you mean 'sft'"),
        ("sft.zero_stage=two", "sft.zero_stage: expected an integer"),
        ("grpo.learning_rate=fast", "grpo.learning_rate: expected a number"),
        ("model.dtype=fp32", "expected one of"),
        ("sft.use_gpu=3", "expected true or false"),
        ("sft.taus=[2, x]", "sft.taus[1]"),
        ("rollout.backend=vlm", "did you mean 'vllm'"),
    ],
)
def test_bad_values_name_key_and_fix(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_unknown_nested_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  mlp_init_stages:\n    - name: full\n      learnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"sft.mlp_init_stages\[0\].learnig_rate.*learning_rate"):
        load_config(path)


def test_missing_required_value():
    from dataclasses import dataclass

    from r1v_ray.config import from_dict

    @dataclass
    class Needs:
        path: str
        n: int = 1

    with pytest.raises(ConfigError, match="missing required config key 'outer.path'"):
        from_dict(Needs, {"n": 2}, prefix="outer")


def test_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["sft.zero_stage"])


def test_shipped_configs_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    files = glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)
    assert len(files) >= 2
    for f in files:
        load_config(f)
    demo = load_config(os.path.join(root, "demo", "tiny.yaml"))
    assert demo.model.source == "zoo" and demo.judge.kind == "offline" and demo.sft.use_gpu is False


def test_exponent_without_dot_is_a_float():
    assert load_config(None, ["grpo.learning_rate=1e-4"]).grpo.learning_rate == 1e-4


def test_generation_lengths_beyond_the_engine_context_fail_at_load_naming_both_keys():
    """Regression: the paper config asked eval for 65536 tokens of a 16384-token engine; it failed at the
    first evaluation, after distill, score, mlp_init and reassemble had run."""
    with pytest.raises(ConfigError, match=r"eval\.max_tokens=65536 .* rollout\.max_model_len=16384"):
        load_config(None, ["rollout.max_model_len=16384"])
    with pytest.raises(ConfigError, match=r"grpo\.max_completion_tokens=2048 .*rollout\.max_model_len=1024"):
        load_config(os.path.join(CONFIGS, "demo", "tiny.yaml"), ["grpo.max_completion_tokens=2048"])
    load_config(PAPER)  # the paper's own settings are consistent


@pytest.mark.parametrize(
    "override, names",
    [
        ("grpo.group_size=0", "grpo.group_size"),
        ("sft.num_workers=0", "sft.num_workers"),
        ("judge.requests_per_second=0", "judge.requests_per_second"),
        ("serve.max_n=-1", "serve.max_n"),
        ("grpo.top_p=0", "grpo.top_p"),
        ("sft.zero_stage=4", "sft.zero_stage"),
        ("sft.iterations=5", "sft.taus"),
        ("sft.global_batch_size=12", "sft.global_batch_size"),
        ("grpo.clip_eps_high=0.1", "grpo.clip_eps_high"),
        ("grpo.colocate=true", "grpo.colocate"),
        ("grpo.tis_cap=0.5", "grpo.tis_cap"),
        ("grpo.ssb_capacity=-1", "grpo.ssb_capacity"),
        ("grpo.policy_ratio=seq", "grpo.policy_ratio"),
        ("grpo.old_logprobs=engine", "grpo.old_logprobs"),
    ],
)
def test_out_of_range_and_inconsistent_values_fail_at_load(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(PAPER, [override])


@pytest.mark.parametrize("other", ["grpo.off_policy_steps=1", "grpo.tis_cap=2.0", "grpo.ssb_capacity=8"])
def test_learner_old_logprobs_refuse_what_needs_the_rollouts(other):
    """Stale samples (one step off-policy, replayed from the buffer) and TIS need the sampling policy's
    log-probs, which only the rollout engine has."""
    name = other.split("=")[0]
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_config(PAPER, ["grpo.old_logprobs=learner", other])
    assert load_config(PAPER, [other]).grpo.old_logprobs == "rollout"  # the default takes each of them


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["grpo.group_size=1", "eval.runs=0", "sft.max_length=0"])
    assert all(k in str(err.value) for k in ("grpo.group_size", "eval.runs", "sft.max_length"))


def test_several_evaluation_runs_need_sampling():
    """k greedy runs repeat one another: their std of 0 would pass for a measured spread."""
    with pytest.raises(ConfigError, match=r"eval\.runs=5 at eval\.temperature=0 gives 5 identical greedy runs"):
        load_config(None, ["eval.temperature=0"])
    assert load_config(None, ["eval.temperature=0", "eval.runs=1"]).eval.runs == 1
