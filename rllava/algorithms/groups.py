"""Per-group statistics over a flat batch: every sample carries the id of the prompt it came from.

All helpers take `x` [B] and `group_ids` [B] and return a [B] tensor holding, for each sample,
the statistic of *its* group, so estimators stay one vectorised line (no Python loop over groups).
"""
from __future__ import annotations

import torch


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group index in [0, G) for each sample, and G."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max()) + 1 if inverse.numel() else 0


def _reduce(x: torch.Tensor, group_ids: torch.Tensor, how: str) -> torch.Tensor:
    inv, g = group_index(group_ids)
    out = torch.zeros(g, dtype=x.dtype, device=x.device)
    return out.scatter_reduce(0, inv, x, reduce=how, include_self=False)[inv]


def group_sum(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    return _reduce(x, group_ids, "sum")


def group_count(group_ids: torch.Tensor) -> torch.Tensor:
    return group_sum(torch.ones(group_ids.shape, dtype=torch.float32, device=group_ids.device), group_ids)


def group_mean(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    return group_sum(x, group_ids) / group_count(group_ids).to(x.dtype)


def group_std(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Unbiased (n - 1) standard deviation, as `torch.std`; 0 for single-sample groups."""
    n = group_count(group_ids).to(x.dtype)
    sq = group_sum((x - group_mean(x, group_ids)) ** 2, group_ids)
    return (sq / (n - 1).clamp(min=1)).sqrt()


def group_max(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    return _reduce(x, group_ids, "amax")


def group_min(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    return _reduce(x, group_ids, "amin")


def uniform_groups(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """True for samples whose group has one distinct value (this includes single-sample groups).

    Exact comparison on purpose: a group of identical float rewards must give exactly zero
    advantage, whereas (r - mean) / (std + eps) on rounding noise can be far from zero.
    """
    return group_max(x, group_ids) == group_min(x, group_ids)
