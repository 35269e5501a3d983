"""The SFT term of the SFT-RL hybrids: which rows RL trains, the term itself, its token weights and coefficient.

A demonstration (the row's reference answer, `algorithm.demonstrations`) enters the batch in one of
three modes. `mix` (LUFFY) treats it like a rollout: it takes part in its group's advantages and in
the RL loss. `switch` (HPT) and `sft` (CHORD) train it by the SFT term alone: advantages and the RL
loss see the rollouts only.

The SFT term is -w * logp over demonstration tokens, aggregated like the policy loss but over the
demonstrations alone, so `sft_coef` weighs a mean demonstration NLL against a mean RL loss however
many of each a batch holds. `sft_mix=add` gives L_RL + c * L_SFT; `convex` gives CHORD's
(1 - c) * L_RL + c * L_SFT.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from rllava.algorithms.aggregation import aggregate, masked_mean
from rllava.registry import Registry

# Whether RL (advantages and the policy loss) also trains the demonstrations, per mode.
RL_TRAINS_DEMONSTRATIONS = {"mix": True, "switch": False, "sft": False}
SFT_MIXES = ("add", "convex")

SFT_TOKEN_WEIGHTS = Registry("sft_token_weight", "per-token weights of the SFT term on demonstrations "
                                                 "(algorithm.sft_token_weight)")


@SFT_TOKEN_WEIGHTS.register("none", description="every demonstration token weighs 1 (plain NLL)")
def uniform(logp: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(logp)


@SFT_TOKEN_WEIGHTS.register("chord_phi", description="CHORD-phi: p (1 - p) of the expert token, no gradient through it")
def chord_phi(logp: torch.Tensor) -> torch.Tensor:
    """CHORD-phi (Zhang et al. 2025, arXiv 2508.11408): tokens the policy already predicts (p ~ 1) or finds
    very unlikely (p ~ 0) weigh little, uncertain ones (p ~ 0.5) most; the weight is a constant in backward."""
    p = logp.detach().exp()
    return p * (1 - p)


def sft_rows(is_expert: Optional[torch.Tensor], sft_coef: float) -> Optional[torch.Tensor]:
    """Indices of the rows the SFT term trains (demonstrations), or None when it trains none."""
    if not sft_coef or is_expert is None or not bool(is_expert.any()):
        return None
    return is_expert.bool().nonzero().squeeze(1)


def rl_rows(is_expert: Optional[torch.Tensor], mode: Optional[str]) -> Optional[torch.Tensor]:
    """Indices of the rows RL trains, or None for all of them (no demonstrations, or `mix`)."""
    if is_expert is None or not mode or RL_TRAINS_DEMONSTRATIONS[mode] or not bool(is_expert.any()):
        return None
    return (~is_expert.bool()).nonzero().squeeze(1)


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, cfg: Any, norm_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The SFT term on demonstration rows (`logp`, `mask`: those rows only): -w * logp aggregated with
    `cfg.loss_agg_mode`. Returns the term and the mean NLL per demonstration token (a metric)."""
    weight = SFT_TOKEN_WEIGHTS.get(cfg.sft_token_weight)(logp)
    return aggregate(-weight * logp, mask, cfg.loss_agg_mode, norm_len), float(masked_mean(-logp.detach(), mask))


def sft_coef_at(cfg: Any, step: int) -> float:
    """`cfg.sft_coef` for the step after `step` completed ones: constant, or CHORD-mu's schedule.

    CHORD-mu: linear warm-up from 0 over `sft_coef_warmup_steps`, then a cosine from `sft_coef` down to
    `sft_coef_final` over `sft_coef_decay_steps`, then `sft_coef_final`.
    """
    peak, warmup = cfg.sft_coef, cfg.sft_coef_warmup_steps
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if cfg.sft_coef_final is None:
        return peak
    decay, t = cfg.sft_coef_decay_steps, step - warmup
    if decay <= 0 or t >= decay:
        return cfg.sft_coef_final
    return cfg.sft_coef_final + (peak - cfg.sft_coef_final) * 0.5 * (1.0 + math.cos(math.pi * t / decay))
