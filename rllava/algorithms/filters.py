"""Group filters (dynamic sampling): `fn(rewards [B], group_ids [B], cfg) -> keep [B] bool`.

A filter keeps or drops whole groups (all samples of a prompt together), so what survives can
still be normalised per group. The pipeline resamples up to `cfg.max_filter_tries` times to
refill the batch.
"""
from __future__ import annotations

from typing import Any

import torch

from rllava.algorithms.groups import group_mean, uniform_groups
from rllava.registry import Registry

GROUP_FILTERS = Registry("group_filter", "keep/drop whole groups before the update (algorithm.group_filter)")


@GROUP_FILTERS.register("dapo_nonuniform")
def dapo_nonuniform(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Keep groups whose rewards are not all equal (DAPO); single-sample groups are dropped."""
    return ~uniform_groups(rewards, group_ids)


@GROUP_FILTERS.register("reward_range")
def reward_range(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Keep groups whose mean reward lies strictly between filter_reward_low and filter_reward_high: with 0/1
    rewards and the defaults (0, 1), every group but the all-wrong and the all-right ones."""
    mean = group_mean(rewards.float(), group_ids)
    return (mean > cfg.filter_reward_low) & (mean < cfg.filter_reward_high)
