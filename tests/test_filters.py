"""Group filters and reward shaping against hand-computed keep masks and penalties."""
from dataclasses import replace

import pytest
import torch

from rllava.algorithms import GROUP_FILTERS, REWARD_SHAPERS
from rllava.config import AlgorithmConfig

CFG = AlgorithmConfig()


def test_dapo_nonuniform_keeps_groups_with_spread():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3])  # spread | all equal | single sample | all zero
    keep = GROUP_FILTERS["dapo_nonuniform"](rewards, groups, CFG)
    assert keep.tolist() == [True, True, False, False, False, False, False]


def test_dapo_nonuniform_with_interleaved_group_ids():
    keep = GROUP_FILTERS["dapo_nonuniform"](torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([5, 2, 5, 2]), CFG)
    assert keep.tolist() == [True, False, True, False]


def test_reward_range_is_a_closed_interval_on_the_group_mean():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.25, 0.75, 0.75, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 4])  # means 0.5, 1, 0.25, 0.75, 0
    cfg = replace(CFG, filter_reward_low=0.25, filter_reward_high=0.75)
    keep = GROUP_FILTERS["reward_range"](rewards, groups, cfg)
    assert keep.tolist() == [True, True, False, False, True, True, True, False, False]


def test_overlong_penalty_soft_buffer():
    cfg = replace(CFG, overlong_buffer_len=5, overlong_penalty_factor=1.0)
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])
    out = REWARD_SHAPERS["overlong_penalty"](torch.ones(6), lengths, cfg, max_new_tokens=20)
    # 0 up to 20 - 5 = 15; (15 - L) / 5 in the buffer; -1 at and beyond 20
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.8, 0.4, 0.0, 0.0]))
    half = REWARD_SHAPERS["overlong_penalty"](torch.zeros(6), lengths, replace(cfg, overlong_penalty_factor=0.5), 20)
    torch.testing.assert_close(half, torch.tensor([0.0, 0.0, -0.1, -0.3, -0.5, -0.5]))


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        REWARD_SHAPERS["overlong_penalty"](torch.ones(1), torch.tensor([3]), replace(CFG, overlong_buffer_len=0), 20)
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        REWARD_SHAPERS["overlong_penalty"](torch.ones(1), torch.tensor([3]), CFG, max_new_tokens=8)  # default 16 > 8
