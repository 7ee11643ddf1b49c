"""The FlexAttention path of the packed-row attention (what CUDA runs) against the padded SDPA kernel and a
dense-mask reference built here from the row's structure, on packed rows and shared-prompt rows, with GQA.

torch has no FlexAttention backward on CPU: gradients are checked through torch's dense rendering of the
same mask_mod (`create_mask`); the fused backward on CUDA runs in tests/gpu/check_flex_attention.py."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from r1v_ray.model import flex_varlen, varlen
from r1v_ray.model.varlen import SharedPromptLayout

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gpu"))
import check_flex_attention  # noqa: E402
import check_gpu_paths  # noqa: E402

SCALE = 0.25
HQ, HKV, DIM = 4, 2, 16  # grouped-query attention: two query heads per key/value head

# Two rows with different samples, crossing flex's 128-token blocks; the second ends in a pad tail (own block).
PACKED = [[200, 37, 150, 113], [90, 300, 80, 30]]
# Three groups: each prompt, then its completions (one of them empty); the third has none.
SHARED = SharedPromptLayout(
    (
        (0, 150, ((150, 60), (210, 0), (210, 140), (350, 1))),
        (351, 40, ((391, 200), (591, 9))),
        (600, 30, ()),
    )
)
SHARED_LEN = 630


def _packed_positions() -> torch.Tensor:
    return torch.tensor([[p for n in row for p in range(n)] for row in PACKED])


def _qkv(batch: int, length: int, grad: bool = False):
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(batch, h, length, DIM, generator=g) for h in (HQ, HKV, HKV)]
    return [t.requires_grad_(grad) for t in qkv]


def _dense_packed_mask() -> torch.Tensor:
    """[B, 1, L, L] built from the sample lengths, independently of the mask_mod."""
    length = sum(PACKED[0])
    mask = torch.zeros(len(PACKED), 1, length, length, dtype=torch.bool)
    for b, row in enumerate(PACKED):
        start = 0
        for n in row:
            mask[b, 0, start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            start += n
    return mask


def _dense_shared_mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, SHARED_LEN, SHARED_LEN, dtype=torch.bool)
    for p_start, p_len, completions in SHARED.groups:
        p = slice(p_start, p_start + p_len)
        mask[0, 0, p, p] = torch.ones(p_len, p_len, dtype=torch.bool).tril()
        for c_start, c_len in completions:
            c = slice(c_start, c_start + c_len)
            mask[0, 0, c, p] = True
            mask[0, 0, c, c] = torch.ones(c_len, c_len, dtype=torch.bool).tril()
    return mask


def _dense(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE, enable_gqa=True).transpose(1, 2)


def _padded(q, k, v, **kw):
    return varlen._varlen_forward("padded", None, q, k, v, None, scaling=SCALE, **kw)[0]


def _mask_mods():
    doc = flex_varlen.document_ids(_packed_positions())
    shared = flex_varlen.shared_prompt_mask_mod(*flex_varlen.layout_tokens(SHARED, SHARED_LEN, "cpu"))
    return flex_varlen.document_mask_mod(doc), shared


def _case(layout: str):
    if layout == "packed":
        q, k, v = _qkv(len(PACKED), sum(PACKED[0]))
        return (q, k, v), (_packed_positions(), None), {"position_ids": _packed_positions()}, _dense_packed_mask()
    return _qkv(1, SHARED_LEN), (None, SHARED), {"r1v_shared_prompts": SHARED}, _dense_shared_mask()


# Compiling costs ~30 s of CPU per layout: the compiled run takes the shared-prompt mask, the richer of the two
# (the GPU check compiles both on CUDA).
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("layout,compiled", [("packed", False), ("shared", False), ("shared", True)])
def test_flex_forward_matches_padded_and_dense_mask(layout, compiled):
    """`_flex_forward` is the function CUDA calls (compiled there); on CPU it runs eager and compiled."""
    (q, k, v), (position_ids, shared), kw, dense_mask = _case(layout)
    with torch.no_grad():
        flex = varlen._flex_forward(q, k, v, SCALE, position_ids, shared, compiled)[0]
        padded = _padded(q, k, v, **kw)
        dense = _dense(q, k, v, dense_mask)
    assert torch.allclose(flex, padded, atol=1e-5) and torch.allclose(flex, dense, atol=1e-5)


def test_mask_mods_render_the_reference_masks():
    packed, shared = _mask_mods()
    length = sum(PACKED[0])
    assert torch.equal(create_mask(packed, len(PACKED), 1, length, length, "cpu"), _dense_packed_mask())
    assert torch.equal(create_mask(shared, 1, 1, SHARED_LEN, SHARED_LEN, "cpu"), _dense_shared_mask())


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_gradients_under_the_mask_mod_match_the_padded(layout):
    packed, shared = _mask_mods()
    (q, _, _), _, kw, _ = _case(layout)
    batch, length = q.shape[0], q.shape[2]
    mask = create_mask(packed if layout == "packed" else shared, batch, 1, length, length, "cpu")
    grads = []
    for run in (lambda q, k, v: _dense(q, k, v, mask), lambda q, k, v: _padded(q, k, v, **kw)):
        q, k, v = _qkv(batch, length, grad=True)
        weights = torch.linspace(-1, 1, q.numel() // batch).reshape(length, HQ, DIM)
        (run(q, k, v) * weights).sum().backward()
        grads.append([q.grad, k.grad, v.grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_in_the_model_matches_the_padded(tiny_checkpoint, monkeypatch):
    """Through transformers' attention interface: kwargs reach the kernel, one block mask per forward."""
    from r1v_ray.grpo.batch import pack_groups
    from r1v_ray.model import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    # eager kernels: compiling them is test_flex_forward_matches_padded_and_dense_mask[compiled]'s part
    monkeypatch.setattr(flex_varlen, "_compiled_flex_attention", lambda: flex_varlen.flex_attention)
    monkeypatch.setattr(flex_varlen, "_compiled_create_block_mask", lambda: flex_varlen.create_block_mask)
    builds = []
    original = flex_varlen.block_mask
    monkeypatch.setattr(flex_varlen, "block_mask", lambda *a, **k: builds.append(1) or original(*a, **k))
    g = torch.Generator().manual_seed(1)
    groups = [
        SimpleNamespace(prompt_ids=torch.randint(300, 600, (n,), generator=g).tolist(), pixel_values=None,
                        completions=[torch.randint(300, 600, (m,), generator=g).tolist() for m in (5, 0, 40)])
        for n in (60, 90)
    ]  # fmt: skip
    shared_batch, layout, _, _ = pack_groups(groups)
    packed_batch = {
        "input_ids": torch.randint(300, 600, (2, 150), generator=g),
        "position_ids": torch.tensor([list(range(100)) + list(range(50)), list(range(30)) + list(range(120))]),
    }
    logits = {}
    with torch.no_grad():
        for kernel in ("padded", "flex"):
            varlen.use_varlen_attention(model, kernel)
            logits[kernel] = (
                model(**packed_batch, use_cache=False).logits,
                model(**shared_batch, use_cache=False, **{varlen.LAYOUT_KWARG: layout}).logits,
            )
    assert builds == [1, 1]  # the LLM's layers shared each forward's mask
    for a, b in zip(*logits.values()):
        assert torch.allclose(a, b, atol=1e-4)


def test_kernel_choice():
    cuda, cpu = SimpleNamespace(device=torch.device("cuda")), SimpleNamespace(device=torch.device("cpu"))
    assert varlen._use_flex("auto", cuda, 0.0) and not varlen._use_flex("auto", cpu, 0.0)
    assert not varlen._use_flex("auto", cuda, 0.1)  # FlexAttention has no dropout
    assert varlen._use_flex("flex", cpu, 0.0) and not varlen._use_flex("padded", cuda, 0.0)
    with pytest.raises(ValueError, match="dropout"):
        varlen._use_flex("flex", cuda, 0.1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        varlen.use_varlen_attention(None, "flash")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_gpu_check_runs_on_cpu():
    """The GPU check's comparison (on CUDA: compiled, bf16, with backward) on CPU, small, eager, forward only;
    its backward step on the padded kernel."""
    results = check_flex_attention.check_flex_attention(
        "cpu", torch.float32, 0.01, compiled=False, backward=False, repeats=1
    )
    assert set(results) == {"packed", "shared_prompt"}
    assert all(r["max_abs_diff"]["out"] < 1e-5 and r["speedup"] > 0 for r in results.values()), results
    case = check_flex_attention.flex_cases("cpu", torch.float32, 0.01)[1]
    q = case["qkv"][0]
    grad_out = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    out, dq, dk, dv = check_flex_attention._attend(case, "padded", torch.float32, False, True, grad_out)
    assert dq.shape == q.shape and dk.shape == dv.shape == case["qkv"][1].shape and bool(dk.abs().sum() > 0)


def test_block_mask_is_rebuilt_for_a_changed_row():
    builds, cache = [], varlen._LastBuilt()
    pos = _packed_positions()

    def get(source):
        return cache.get(source, "cpu", 2, pos.shape[1], lambda: builds.append(1) or len(builds))

    assert get(pos) == get(pos) == 1  # the layers of one forward
    pos[0, 5] = 0  # the same tensor changed in place: its version counter moved
    assert get(pos) == 2 and get(pos.clone()) == 3 and get(SHARED) == 4


def test_the_gpu_check_script_runs_the_flex_check():
    """check_gpu_paths.py imports without a GPU, and its main() runs this check first."""
    import inspect

    assert check_gpu_paths.check_flex_attention is check_flex_attention.check_flex_attention
    assert "check_flex_attention()" in inspect.getsource(check_gpu_paths.main)
