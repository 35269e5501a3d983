"""RL algorithms as small registered functions: advantages, policy losses, aggregation, KL, filters, shaping.

Importing this package fills every algorithm registry. User code adds its own entries with the
same decorators (`@ADVANTAGES.register("name")`) from a plugin file; no framework edit needed.
This layer imports torch and `rllava.registry` only.
"""
from rllava.algorithms.advantages import ADVANTAGES, check_batch, compute_advantages, discounted_returns
from rllava.algorithms.aggregation import AGGREGATIONS, aggregate, masked_mean, masked_whiten
from rllava.algorithms.demonstrations import (
    SFT_TOKEN_WEIGHTS,
    demonstration_tokens,
    hint_ratio_at,
    rl_part,
    rl_token_mask,
    sft_coef_at,
    sft_loss,
    sft_part,
)
from rllava.algorithms.entropy_advantage import entropy_shaped_advantages
from rllava.algorithms.filters import GROUP_FILTERS
from rllava.algorithms.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    entropy_loss,
    kl_loss,
    make_kl_controller,
)
from rllava.algorithms.losses import POLICY_LOSSES, clipped_surrogate
from rllava.algorithms.rollout_correction import IS_CORRECTIONS
from rllava.algorithms.shaping import REWARD_SHAPERS
from rllava.algorithms.token_selection import entropy_threshold, top_entropy_mask

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "GROUP_FILTERS", "IS_CORRECTIONS", "KL_CONTROLLERS", "KL_ESTIMATORS", "POLICY_LOSSES",
    "REWARD_SHAPERS", "SFT_TOKEN_WEIGHTS", "AdaptiveKLController", "FixedKLController", "aggregate",
    "apply_kl_penalty", "check_batch", "clipped_surrogate", "compute_advantages", "discounted_returns", "entropy_loss",
    "entropy_shaped_advantages",
    "demonstration_tokens", "hint_ratio_at", "kl_loss", "make_kl_controller", "masked_mean", "masked_whiten", "rl_part",
    "rl_token_mask",
    "sft_coef_at", "sft_loss", "sft_part", "entropy_threshold", "top_entropy_mask",
]
