"""Entropy-based advantage shaping (Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective",
arXiv 2506.14758): high-entropy tokens, where the policy explores, get a bonus on their advantage.

    A'_t = A_t + min(alpha * H_t, |A_t| / kappa)

H_t is the policy's entropy at token t before the update, with no gradient through it. The clip at |A_t| / kappa
keeps the bonus from reversing an advantage's sign or dominating it, and a token with A_t = 0 gets none, so
groups without a reward spread still carry no gradient.
"""
from __future__ import annotations

import torch


def entropy_shaped_advantages(advantages: torch.Tensor, entropy: torch.Tensor, alpha: float,
                              kappa: float) -> torch.Tensor:
    """[B, T] advantages plus the clipped entropy bonus (zero where the advantage is zero, e.g. padding)."""
    bonus = torch.minimum(alpha * entropy.detach().to(advantages.dtype), advantages.abs() / kappa)
    return advantages + bonus
