"""The DRLC penalty and GRPO group advantages (Public contracts in DESIGN.md)."""

import math

import pytest
import torch

from r1v_ray.distill import repetition_penalty
from r1v_ray.grpo import group_advantages


def test_penalty_formula():
    # Paper eq. (1) by hand.
    p = repetition_penalty(0.5, 0.2, 0.8, alpha=0.7, beta=1.0, gamma=2.0)
    assert p == pytest.approx(math.exp(0.7 * (1 - (0.5 + 0.2 + 1.6) / 4.0)))
    assert repetition_penalty(1, 1, 1, 0.7, 1, 1) == pytest.approx(1.0)
    assert repetition_penalty(0, 0, 0, 0.5, 1, 1) == pytest.approx(math.exp(0.5))


def test_penalty_capped_at_two():
    assert repetition_penalty(0, 0, 0, alpha=5.0, beta=1, gamma=1) == 2.0


def test_penalty_monotone_in_scores():
    lo = repetition_penalty(0.1, 0.1, 0.1, 0.7, 1, 1)
    hi = repetition_penalty(0.9, 0.9, 0.9, 0.7, 1, 1)
    assert lo > hi >= 1.0


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_penalty_rejects_unnormalized(bad):
    with pytest.raises(ValueError, match="s_t"):
        repetition_penalty(0.5, bad, 0.5, 0.7, 1, 1)


def test_group_advantages_match_definition():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 0.0])
    adv = group_advantages(r, group_size=4)
    for g in range(3):
        grp = r[4 * g : 4 * g + 4]
        expected = (grp - grp.mean()) / (grp.std() + 1e-6)
        assert torch.allclose(adv[4 * g : 4 * g + 4], expected)
    assert torch.equal(adv[4:8], torch.zeros(4))  # zero-variance group


def test_group_advantages_unscaled_and_errors():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0])
    assert torch.allclose(group_advantages(r, 2, scale_by_std=False), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), 2)


def test_the_model_layer_does_not_import_the_data_layer():
    """Layers run one way (jobs -> stages -> engines -> model / data): model/ takes the task's text as an argument.
    File access (`data.io`, the store) sits below both."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "r1v_ray" / "model"
    found = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith(("r1v_ray.data", "r1v_ray.distill")) and n != "r1v_ray.data.io"
            ]
    assert not found, found


def _imports(path) -> list[str]:
    """The modules a file imports, leaving out `if TYPE_CHECKING:` blocks (annotations only)."""
    import ast

    tree = ast.parse(path.read_text())
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            names += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_stages_take_their_inputs_from_the_run_directory_not_from_each_other():
    """A stage module imports no other stage's module (inputs come from manifests: `stages.inputs`), and
    nothing below the stages (engines, model, data, the algorithm packages) imports one."""
    import pathlib

    from r1v_ray.stages import STAGES

    root = pathlib.Path(__file__).resolve().parents[2] / "r1v_ray"
    stage_modules = {f"r1v_ray.stages.{s}" for s in STAGES} | {"r1v_ray.stages.eval"}
    found = []
    for path in (root / "stages").glob("*.py"):
        own = f"r1v_ray.stages.{path.stem}"
        found += [f"stages/{path.name}: {n}" for n in _imports(path) if n in stage_modules - {own}]
    for below in ("engines", "model", "data", "distill", "sft", "grpo", "eval"):
        for path in (root / below).rglob("*.py"):
            found += [f"{below}/{path.name}: {n}" for n in _imports(path) if n.startswith("r1v_ray.stages")]
    assert not found, found
