"""Rollout correction: weights for the gap between the rollout engine's sampling and the trainer's policy.

A rollout engine (vLLM in bf16, say) samples from pi_rollout, which is not quite the trainer's pi_old.
With rho = pi_old / pi_rollout on each token (from `Episode.rollout_logp`), every per-token policy loss
is multiplied by a detached weight w, within the bounds [algorithm.tis_floor, algorithm.tis_cap]:

- `token_truncate` (TIS, Yao et al. 2025): w = rho, clamped into the bounds.
- `token_mask` (IcePop, Ring-1T; masked importance sampling): w = rho inside the bounds, 0 outside, so a
  token the two engines disagree on leaves the gradient.
- `sequence_truncate`, `sequence_mask`: the same with the sequence's ratio, the product of its tokens'
  ratios, on every token of it.

Each mode is `fn(log_ratio [B, T], mask [B, T], floor, cap) -> weights [B, T]`; log-space bounds keep
padding and extreme ratios from overflowing.
"""
from __future__ import annotations

import math

import torch

from rllava.algorithms.aggregation import masked_mean
from rllava.registry import Registry

IS_CORRECTIONS = Registry("is_correction", "train/rollout importance weights when algorithm.tis_cap is set "
                                           "(algorithm.tis_mode): fn(log_ratio, mask, floor, cap) -> weights")


def _bounds(floor: float, cap: float) -> tuple[float, float]:
    return (math.log(floor) if floor > 0 else -math.inf), math.log(cap)


def _truncate(log_w: torch.Tensor, floor: float, cap: float) -> torch.Tensor:
    lo, hi = _bounds(floor, cap)
    return log_w.clamp(lo, hi).exp()


def _mask(log_w: torch.Tensor, floor: float, cap: float) -> torch.Tensor:
    lo, hi = _bounds(floor, cap)
    inside = (log_w >= lo) & (log_w <= hi)
    return torch.where(inside, log_w.clamp(max=hi).exp(), torch.zeros_like(log_w))


def _sequence(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (log_ratio * mask).sum(-1, keepdim=True).expand_as(mask)


@IS_CORRECTIONS.register("token_truncate", description="TIS: each token's ratio clamped into [tis_floor, tis_cap]")
def token_truncate(log_ratio, mask, floor, cap):
    return _truncate(log_ratio, floor, cap)


@IS_CORRECTIONS.register("token_mask", masks=True,
                         description="IcePop: each token's ratio inside [tis_floor, tis_cap], 0 (no gradient) outside")
def token_mask(log_ratio, mask, floor, cap):
    return _mask(log_ratio, floor, cap)


@IS_CORRECTIONS.register("sequence_truncate", description="the sequence's ratio (product over tokens), clamped")
def sequence_truncate(log_ratio, mask, floor, cap):
    return _truncate(_sequence(log_ratio, mask), floor, cap)


@IS_CORRECTIONS.register("sequence_mask", masks=True,
                         description="the sequence's ratio inside [tis_floor, tis_cap], 0 for the whole sequence outside")
def sequence_mask(log_ratio, mask, floor, cap):
    return _mask(_sequence(log_ratio, mask), floor, cap)


def rollout_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                    cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """The detached weights of `cfg.tis_mode` and their metrics (mean weight; the share masked out, for masks)."""
    log_ratio = torch.where(mask != 0, old_logp - rollout_logp, torch.zeros_like(old_logp))
    entry = IS_CORRECTIONS.entry(cfg.tis_mode)
    w = entry.fn(log_ratio, mask, cfg.tis_floor, cfg.tis_cap).detach()
    metrics = {"tis_weight_mean": float(masked_mean(w, mask))}
    if entry.meta.get("masks"):
        metrics["tis_masked_frac"] = float(masked_mean((w == 0).to(mask.dtype), mask))
    return w, metrics
