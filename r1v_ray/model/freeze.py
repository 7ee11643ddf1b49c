"""Choose trainable parts by parameter-name prefix (paper default: the projector only)."""

from __future__ import annotations

import torch

# Short names for the three parts of R1V (HF InternVL layout).
PREFIX_ALIASES = {
    "vision": "model.vision_tower.",
    "projector": "model.multi_modal_projector.",
    "llm": "model.language_model.",
    "lm_head": "lm_head.",
}


def resolve_prefixes(prefixes: list[str]) -> list[str]:
    return [PREFIX_ALIASES.get(p, p) for p in prefixes]


def set_trainable(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """requires_grad = True exactly for parameters under `prefixes`; returns the trainable names."""
    resolved = resolve_prefixes(prefixes)
    names = [n for n, _ in model.named_parameters()]
    for prefix, original in zip(resolved, prefixes):
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ValueError(
                f"model.trainable_prefixes: {original!r} matches no parameter; use an alias "
                f"{sorted(PREFIX_ALIASES)} or a prefix such as {tops}"
            )
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in resolved))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors weight sync and partial checkpoints carry: trainable parameters only."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def parameter_summary(model: torch.nn.Module) -> str:
    """One screen: trainable / frozen parameter counts per part."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        part = next((alias for alias, p in PREFIX_ALIASES.items() if name.startswith(p)), name.split(".")[0])
        counts = rows.setdefault(part, [0, 0])
        counts[0 if param.requires_grad else 1] += param.numel()
    total_t = sum(r[0] for r in rows.values())
    total_f = sum(r[1] for r in rows.values())
    lines = [f"{'part':<12}{'trainable':>16}{'frozen':>16}"]
    for part, (t, f) in rows.items():
        lines.append(f"{part:<12}{t:>16,}{f:>16,}")
    lines.append(f"{'total':<12}{total_t:>16,}{total_f:>16,}")
    share = 100.0 * total_t / max(1, total_t + total_f)
    lines.append(f"trainable share: {share:.3f}%")
    return "\n".join(lines)
