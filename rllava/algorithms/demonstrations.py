"""The SFT term of the SFT-RL hybrids: which rows RL trains, the term itself, its token weights and coefficient.

A demonstration (the row's reference answer, `algorithm.demonstrations`) enters the batch in one of
four modes. `mix` (LUFFY) treats it like a rollout: it takes part in its group's advantages and in
the RL loss. `switch` (HPT) and `sft` (CHORD) add whole demonstration rows that the SFT term alone
trains. `hint` (UFT) starts each rollout from a prefix of the demonstration: those first response
tokens are trained by the SFT term, the generated rest by RL. Advantages and the RL loss see the
rollouts' own tokens only, except under `mix`.

The SFT term is -w * logp over demonstration tokens, aggregated like the policy loss but over the
demonstrations alone, so `sft_coef` weighs a mean demonstration NLL against a mean RL loss however
many of each a batch holds. `sft_mix=add` gives L_RL + c * L_SFT; `convex` gives CHORD's
(1 - c) * L_RL + c * L_SFT.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from rllava.algorithms.aggregation import aggregate, masked_mean, row_mean
from rllava.registry import Registry

# Whether RL (advantages and the policy loss) also trains the demonstrations, per mode.
RL_TRAINS_DEMONSTRATIONS = {"mix": True, "switch": False, "sft": False, "hint": False}
SFT_MIXES = ("add", "convex")

SFT_TOKEN_WEIGHTS = Registry("sft_token_weight", "per-token weights of the SFT term on demonstrations "
                                                 "(algorithm.sft_token_weight): fn(logp, entropy, mask) -> [B, T]")


@SFT_TOKEN_WEIGHTS.register("none", description="every demonstration token weighs 1 (plain NLL)")
def uniform(logp: torch.Tensor, entropy: Optional[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(logp)


@SFT_TOKEN_WEIGHTS.register("chord_phi", description="CHORD-phi: p (1 - p) of the expert token, no gradient through it")
def chord_phi(logp: torch.Tensor, entropy: Optional[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """CHORD-phi (Zhang et al. 2025, arXiv 2508.11408): tokens the policy already predicts (p ~ 1) or finds
    very unlikely (p ~ 0) weigh little, uncertain ones (p ~ 0.5) most; the weight is a constant in backward."""
    p = logp.detach().exp()
    return p * (1 - p)


@SFT_TOKEN_WEIGHTS.register("srft", description="SRFT: exp(-H) of the demonstration row's mean policy entropy, no gradient")
def srft_sft_weight(logp: torch.Tensor, entropy: Optional[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """SRFT (Fu et al. 2025, arXiv 2506.19767): the SFT term weakens where the policy is uncertain about
    the demonstration (high entropy, far from the expert). H is the mean entropy over the row's
    demonstration tokens, so the weight does not depend on how a batch is split; the paper's 0.5 is
    `sft_coef`."""
    if entropy is None:
        raise ValueError("sft_token_weight=srft needs the policy entropy of the demonstration tokens")
    return torch.exp(-row_mean(entropy.detach(), mask)).expand_as(logp)


def demonstration_tokens(is_expert: Optional[torch.Tensor], hint_len: Optional[torch.Tensor],
                         mask: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, T] bool: the response tokens that come from a demonstration (whole demonstration rows, UFT hint
    prefixes), or None when there are none."""
    demo = None
    if is_expert is not None and bool(is_expert.any()):
        demo = is_expert.to(device=mask.device, dtype=torch.bool)[:, None].expand_as(mask)
    if hint_len is not None and bool(hint_len.any()):
        positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
        hint = positions < hint_len.to(mask.device)[:, None]
        demo = hint if demo is None else demo | hint
    return demo


def rl_part(mask: torch.Tensor, demo: Optional[torch.Tensor], is_expert: Optional[torch.Tensor], mode: Optional[str]
            ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """(rows RL trains, their token mask). Rows: None for all of them; under the SFT-only modes a whole
    demonstration row (`is_expert`) drops out (it must not count as an RL row in a per-sequence mean). A
    rollout whose own tokens are all masked (a cut one under `mask_truncated`, one all UFT hint) stays: its
    reward counts in its group. Rows are chosen by `is_expert`, not by the token masks: a row that is all hint
    fills `demo` only as far as the batch's padding reaches, so the choice would depend on the batch's width."""
    if demo is None or not mode or RL_TRAINS_DEMONSTRATIONS[mode]:
        return None, mask
    own = mask * ~demo
    if is_expert is None or not bool(is_expert.any()):
        return None, own
    rows = (~is_expert.to(dtype=torch.bool)).nonzero().squeeze(1).to(mask.device)
    return rows, own[rows]


def rl_token_mask(mask: torch.Tensor, is_expert: Optional[torch.Tensor], hint_len: Optional[torch.Tensor],
                  mode: Optional[str]) -> torch.Tensor:
    """[B, T] mask of the tokens RL trains: every response token but SFT-only demonstration tokens."""
    rows, own = rl_part(mask, demonstration_tokens(is_expert, hint_len, mask), is_expert, mode)
    if rows is None:
        return own
    out = torch.zeros_like(mask)
    out[rows, :own.shape[1]] = own
    return out


def sft_part(mask: torch.Tensor, demo: Optional[torch.Tensor], sft_coef: float
             ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(rows the SFT term trains, their demonstration-token mask), or (None, None) when it trains nothing."""
    if not sft_coef or demo is None:
        return None, None
    demo_mask = mask * demo
    rows = (demo_mask != 0).any(1).nonzero().squeeze(1)
    return rows, demo_mask[rows]


def hint_ratio_at(cfg: Any, step: int) -> float:
    """UFT's hint proportion for the step after `step` completed ones: a cosine from `hint_ratio_high` to
    `hint_ratio_low` over `hint_steps` steps, then 0 (training ends as plain RL, like evaluation)."""
    if step >= cfg.hint_steps:
        return 0.0
    cos = math.cos(math.pi * (step + 1) / cfg.hint_steps)
    return cfg.hint_ratio_low + 0.5 * (cfg.hint_ratio_high - cfg.hint_ratio_low) * (1.0 + cos)


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, cfg: Any, norm_len: int | None = None,
             entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The SFT term on demonstration rows (`logp`, `mask`, `entropy`: those rows only): -w * logp
    aggregated with `cfg.loss_agg_mode`. Returns the term and the mean NLL per demonstration token (a metric)."""
    weight = SFT_TOKEN_WEIGHTS.get(cfg.sft_token_weight)(logp, entropy, mask)
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
