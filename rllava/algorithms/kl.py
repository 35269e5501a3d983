"""KL and entropy regularisers.

Estimators are per token, `fn(logp, ref_logp) -> kl [B, T]`, estimating KL(pi || pi_ref) from
tokens sampled by pi (Schulman's k1/k2/k3). With x = ref_logp - logp:
  k1 = -x,   k2 = x^2 / 2,   k3 = exp(x) - 1 - x  (>= 0, low variance),   abs = |x|.
k3 clamps x to [-20, 20] and its value to <= 10 so a diverged token cannot blow the loss up.
"k1+", "k2+", "k3+", "abs+" are straight-through variants: their value is the named estimator's
and their gradient is k2's (grad = logp - ref_logp, an unbiased KL gradient), as veRL's "+" modes.

KL can enter the reward (`apply_kl_penalty`, subtracted per token before advantages; coefficient
from a `FixedKLController` or `AdaptiveKLController`, fed the step's mean KL per sequence over all
ranks) or the loss (`kl_loss`, added to the minimised loss as coef * kl). One `algorithm.kl_estimator` (default k3,
GRPO's choice for the loss) serves both places; PPO-RLHF and REINFORCE++ put k1 in the reward (veRL's default
there too): set `kl_estimator=k1` with `kl_in=reward` to match them. The adaptive controller is fed each
sequence's *mean* per-token KL (veRL's convention), not Ziegler et al.'s KL summed over the sequence, so its
`kl_target` is per token. `entropy_loss` returns the
aggregated entropy; the actor *subtracts* coef * entropy, since a bonus must lower the minimised loss.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from rllava.algorithms.aggregation import aggregate, batch_sum
from rllava.registry import Registry

KL_ESTIMATORS = Registry("kl_estimator", "per-token KL(pi || ref) estimators (algorithm.kl_estimator): fn(logp, ref_logp) -> kl")
KL_CONTROLLERS = Registry("kl_controller", "KL coefficient schedules (algorithm.kl_ctrl): fn(cfg) -> controller")


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp - ref_logp (unbiased, can be negative)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(logp - ref_logp)^2 / 2."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(ref - logp) - (ref - logp) - 1: unbiased, non-negative, low variance (clamped)."""
    x = (ref_logp - logp).clamp(-20.0, 20.0)
    return (x.exp() - x - 1).clamp(max=10.0)


@KL_ESTIMATORS.register("abs")
def abs_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """|logp - ref_logp|."""
    return (logp - ref_logp).abs()


def _straight_through(base: Callable) -> Callable:
    def fn(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        grad = k2(logp, ref_logp)
        return base(logp, ref_logp).detach() + grad - grad.detach()
    return fn


for _name in ("k1", "k2", "k3", "abs"):
    KL_ESTIMATORS.register(f"{_name}+", description=f"value of {_name}, gradient of k2 (straight-through)")(
        _straight_through(KL_ESTIMATORS.get(_name)))


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019: move the coefficient so the observed KL tracks `target`.

    value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon.
    """

    def __init__(self, init: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL controller needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


KL_CONTROLLERS.register("fixed", description="constant coefficient algorithm.kl_coef")(
    lambda cfg: FixedKLController(cfg.kl_coef))
KL_CONTROLLERS.register("adaptive", description="adaptive coefficient from kl_coef toward kl_target over kl_horizon")(
    lambda cfg: AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon))


def make_kl_controller(cfg: Any) -> Any:
    """The controller named by `cfg.kl_ctrl`."""
    return KL_CONTROLLERS.get(cfg.kl_ctrl)(cfg)


@torch.no_grad()
def apply_kl_penalty(token_rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                     coef: float, estimator: str) -> tuple[torch.Tensor, float]:
    """KL in the reward: r_t - coef * kl_t on trained tokens; also the mean KL (per sequence, then over the
    step's sequences with a trained token: every rank's, as one process would see them). A collective under
    torchrun."""
    kl = KL_ESTIMATORS.get(estimator)(logp, ref_logp) * mask
    seq_kl = (kl.sum(-1) / mask.sum(-1).clamp(min=1)).double()
    trained = (mask.sum(-1) > 0).double()  # a row with no trained token (cut, masked) has no KL to average in
    # Sum and count over ranks, not a mean of rank means: ranks may hold different numbers of sequences
    # (group filters, dynamic sampling), and each sequence must weigh the same.
    total, n = batch_sum(torch.stack([(seq_kl * trained).sum(), trained.sum()])).tolist()
    return token_rewards - coef * kl, total / max(1.0, n)


def kl_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: str, agg_mode: str,
            norm_len: Optional[int] = None) -> torch.Tensor:
    """KL in the loss: the aggregated per-token KL estimate (the actor adds coef * this)."""
    return aggregate(KL_ESTIMATORS.get(estimator)(logp, ref_logp), mask, agg_mode, norm_len)


def entropy_loss(entropy: torch.Tensor, mask: torch.Tensor, agg_mode: str, norm_len: Optional[int] = None) -> torch.Tensor:
    """The aggregated token entropy (the actor subtracts coef * this from the loss)."""
    return aggregate(entropy, mask, agg_mode, norm_len)
