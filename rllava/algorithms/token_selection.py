"""Which tokens carry the policy gradient.

"Beyond the 80/20 Rule" (Wang et al. 2025, arXiv 2506.01939): a minority of high-entropy
"forking" tokens, where the policy hesitates between continuations, drives what RL with
verifiable rewards learns. Training the policy-gradient term on the top 20 % of tokens by
entropy matches or beats training on all of them. The selection is by a threshold over the
step's whole batch (not per micro-batch), so it does not depend on how the batch is split.
"""
from __future__ import annotations

import math

import torch


def entropy_threshold(entropies: torch.Tensor, frac: float) -> float:
    """The entropy at which the top `frac` share of `entropies` (1-D) starts; tokens at or above it are kept."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    if entropies.numel() == 0:
        return math.inf
    k = max(1, math.ceil(frac * entropies.numel()))
    return float(torch.topk(entropies.float().flatten(), k).values[-1])


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """1.0 on trained tokens (`mask`) whose entropy is at least `threshold`, else 0.0; [B, T]."""
    return ((entropy >= threshold) & (mask != 0)).to(torch.float32)
