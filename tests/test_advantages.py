"""Advantage estimators against hand-computed values (padding, uniform and single-sample groups, unequal lengths)."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from rllava.algorithms import ADVANTAGES, compute_advantages
from rllava.config import AlgorithmConfig
from rllava.data.types import Batch, Episode, Prompt

CFG = AlgorithmConfig()


def make_batch(rewards, groups, lengths, width=None, **fields):
    """Duck-typed batch: score at the last trained token of each right-padded response."""
    width = width or max(lengths)
    mask = torch.zeros(len(rewards), width)
    token_rewards = torch.zeros(len(rewards), width)
    for i, (r, n) in enumerate(zip(rewards, lengths)):
        mask[i, :n] = 1.0
        token_rewards[i, n - 1] = r
    return SimpleNamespace(token_rewards=token_rewards, response_mask=mask,
                           group_ids=torch.tensor(groups), **fields)


def expand(per_seq, lengths, width):
    """Expected [B, T]: each value on its sequence's first `length` tokens, 0 on padding."""
    out = torch.zeros(len(per_seq), width)
    for i, (a, n) in enumerate(zip(per_seq, lengths)):
        out[i, :n] = a
    return out


# group 0 = [1, 0, 0] (spread), group 1 = [1, 1] (all equal), group 2 = [0.5] (single sample)
REWARDS, GROUPS, LENGTHS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5], [0, 0, 0, 1, 1, 2], [3, 1, 2, 2, 4, 3]


def test_grpo_batch_std_divides_the_group_baseline_by_the_batch_std():
    """LitePPO: group means [1/3, 1, 0.5]; the six rewards' unbiased std is sqrt(1.208333 / 5) = 0.491596."""
    adv, ret = ADVANTAGES["grpo_batch_std"](make_batch(REWARDS, GROUPS, LENGTHS), CFG)
    per_seq = [(2 / 3) / 0.491596, (-1 / 3) / 0.491596, (-1 / 3) / 0.491596, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, expand(per_seq, LENGTHS, 4), atol=1e-5, rtol=1e-5)
    assert torch.equal(adv, ret)


def test_grpo_normalises_by_group_std_and_zeroes_uniform_and_single_groups():
    adv, ret = ADVANTAGES["grpo"](make_batch(REWARDS, GROUPS, LENGTHS), CFG)
    # mean 1/3, unbiased std sqrt(1/3): (2/3)/0.57735 = 1.1547, (-1/3)/0.57735 = -0.57735
    expected = expand([1.1547005, -0.5773503, -0.5773503, 0, 0, 0], LENGTHS, 4)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, adv)


def test_grpo_without_std_is_dr_grpo_r_minus_mean():
    batch = make_batch(REWARDS, GROUPS, LENGTHS)
    adv, _ = ADVANTAGES["grpo"](batch, replace(CFG, norm_adv_by_std=False))
    torch.testing.assert_close(adv, expand([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], LENGTHS, 4))
    torch.testing.assert_close(ADVANTAGES["dr_grpo"](batch, CFG)[0], adv)


def test_identical_float_rewards_give_exactly_zero():
    adv, _ = ADVANTAGES["grpo"](make_batch([0.1, 0.1, 0.1], [7, 7, 7], [2, 2, 2]), CFG)
    assert torch.equal(adv, torch.zeros(3, 2))


def test_grpo_works_on_a_real_collated_batch():
    prompt = Prompt(input_ids=[1, 2])
    eps = [Episode(prompt, response_ids=[5] * n, response_mask=[1] * n, reward=r, group_id=0)
           for r, n in [(1.0, 2), (0.0, 3)]]
    adv, _ = compute_advantages(Batch.from_episodes(eps, pad_id=0), replace(CFG, norm_adv_by_std=False))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5]]))


def test_rloo_leave_one_out():
    rewards, groups, lengths = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 3.0, 1.0], [0, 0, 0, 1, 1, 2, 3, 3], [1, 2, 3, 1, 1, 2, 3, 1]
    adv, _ = ADVANTAGES["rloo"](make_batch(rewards, groups, lengths), CFG)
    # 1 - mean(0,0) = 1; 0 - mean(1,0) = -0.5; group [3, 1] -> +2, -2
    torch.testing.assert_close(adv, expand([1, -0.5, -0.5, 0, 0, 0, 2, -2], lengths, 3))


def test_grpo_passk_only_best_sample_gets_max_minus_second():
    rewards, groups, lengths = [0.2, 0.9, 0.5, 0.7, 1.0, 1.0, 0.0, 0.3], [0, 0, 0, 0, 1, 1, 1, 2], [2, 2, 1, 2, 1, 2, 2, 2]
    batch = make_batch(rewards, groups, lengths)
    adv, _ = ADVANTAGES["grpo_passk"](batch, replace(CFG, norm_adv_by_std=False))
    # group 0: best is 0.9, second 0.7 -> 0.2; group 1 ties at max -> 1 - 1 = 0; single sample -> 0
    torch.testing.assert_close(adv, expand([0, 0.2, 0, 0, 0, 0, 0, 0], lengths, 2))
    adv_std, _ = ADVANTAGES["grpo_passk"](batch, CFG)
    # unbiased std of [0.2, 0.9, 0.5, 0.7] = 0.2986079 -> 0.2 / 0.2986079 = 0.669775
    torch.testing.assert_close(adv_std, expand([0, 0.669775, 0, 0, 0, 0, 0, 0], lengths, 2), atol=1e-5, rtol=0)


def test_reinforce_plus_plus_discounts_and_whitens_over_tokens():
    batch = make_batch([1.0, -1.0], [0, 1], [3, 2], width=3)
    cfg = replace(CFG, gamma=0.5, whiten_advantages=False)
    adv, ret = ADVANTAGES["reinforce_plus_plus"](batch, cfg)
    expected = torch.tensor([[0.25, 0.5, 1.0], [-0.5, -1.0, 0.0]])
    torch.testing.assert_close(ret, expected)
    torch.testing.assert_close(adv, expected)
    adv_w, _ = ADVANTAGES["reinforce_plus_plus"](batch, replace(cfg, whiten_advantages=True))
    # tokens [0.25, 0.5, 1, -0.5, -1]: mean 0.05, unbiased std 0.798436
    torch.testing.assert_close(adv_w, torch.tensor([[0.250490, 0.563602, 1.189826], [-0.688847, -1.315071, 0.0]]),
                               atol=1e-5, rtol=0)


def test_discounting_skips_environment_tokens():
    batch = SimpleNamespace(token_rewards=torch.tensor([[0.0, 0.0, 1.0]]), response_mask=torch.tensor([[1.0, 0.0, 1.0]]),
                            group_ids=torch.tensor([0]))
    _, ret = ADVANTAGES["reinforce_plus_plus"](batch, replace(CFG, gamma=0.5))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.0, 1.0]]))


def test_reinforce_plus_plus_baseline():
    lengths = [2, 1, 1, 2]
    batch = make_batch([1.0, 0.0, 2.0, 2.0], [0, 0, 1, 1], lengths)
    adv, ret = ADVANTAGES["reinforce_plus_plus_baseline"](batch, CFG)
    torch.testing.assert_close(ret, expand([0.5, -0.5, 0, 0], lengths, 2))
    # tokens [0.5, 0.5, -0.5, 0, 0, 0] whitened: mean 1/12, unbiased std 0.376386
    expected = torch.tensor([[1.107019, 1.107019], [-1.549826, 0.0], [-0.221404, 0.0], [-0.221404, -0.221404]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_remax_subtracts_greedy_baseline():
    batch = make_batch([1.0, 0.0], [0, 1], [3, 2], baseline_rewards=torch.tensor([0.5, 0.5]))
    batch.token_rewards[0, :2] = -0.1  # a per-token KL penalty in the reward
    adv, ret = compute_advantages(batch, CFG, "remax")
    torch.testing.assert_close(ret, torch.tensor([[0.8, 0.9, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.3, 0.4, 0.5], [-0.5, -0.5, 0.0]]))


def test_opo_length_weighted_baseline():
    lengths = [1, 3, 2, 2]
    adv, _ = ADVANTAGES["opo"](make_batch([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], lengths), CFG)
    # b = (1*1 + 3*0) / 4 = 0.25
    torch.testing.assert_close(adv, expand([0.75, -0.25, 0, 0], lengths, 3))


def test_gpg_scales_by_batch_over_valid_samples():
    adv, _ = ADVANTAGES["gpg"](make_batch(REWARDS, GROUPS, LENGTHS), CFG)
    # 3 of 6 samples are in non-uniform groups -> alpha = 2
    torch.testing.assert_close(adv, expand([4 / 3, -2 / 3, -2 / 3, 0, 0, 0], LENGTHS, 4))


def critic_batch() -> SimpleNamespace:
    """Row 0: three trained tokens; row 1: an environment token in the middle; row 2: padding at the end."""
    return SimpleNamespace(
        token_rewards=torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
        values=torch.tensor([[0.5, 0.6, 0.7], [0.5, 9.0, 0.7], [0.5, 0.6, 5.0]]),
        response_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
        group_ids=torch.tensor([0, 1, 2]))


def test_gae_hand_values_padding_and_env_tokens():
    batch = critic_batch()
    cfg = replace(CFG, gamma=0.9, lam=0.8, whiten_advantages=False)
    adv, ret = compute_advantages(batch, cfg, "gae")
    # row 0: d2 = 0.3; d1 = 0.9*0.7 - 0.6 = 0.03 -> 0.03 + 0.72*0.3 = 0.246; d0 = 0.04 -> 0.04 + 0.72*0.246 = 0.21712
    # row 1: the env token is skipped: d0 = 0.9*0.7 - 0.5 = 0.13 -> 0.13 + 0.72*0.3 = 0.346
    # row 2: padding after token 1: d1 = 1 - 0.6 = 0.4; d0 = 0.9*0.6 - 0.5 = 0.04 -> 0.04 + 0.72*0.4 = 0.328
    expected = torch.tensor([[0.21712, 0.246, 0.3], [0.346, 0.0, 0.3], [0.328, 0.4, 0.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0], [0.846, 0.0, 1.0], [0.828, 1.0, 0.0]]))
    adv_w, _ = compute_advantages(batch, replace(cfg, whiten_advantages=True), "gae")
    valid = batch.response_mask > 0
    assert abs(float(adv_w[valid].mean())) < 1e-6 and abs(float(adv_w[valid].std()) - 1) < 1e-4
    assert torch.equal(adv_w[~valid], torch.zeros(2))


def test_vapo_gae_length_adaptive_lambda_and_unbiased_returns():
    """alpha = 0.5: lambda = 1 - 1/(0.5 l) is 1/3 for the 3-token row and 0 for the 2-token rows; the critic's
    returns use lambda = 1, i.e. the discounted rewards (0.81, 0.9, 1.0 with gamma 0.9)."""
    batch = critic_batch()
    cfg = replace(CFG, gamma=0.9, vapo_alpha=0.5, whiten_advantages=False)
    adv, ret = compute_advantages(batch, cfg, "vapo_gae")
    # row 0 (lambda 1/3): a2 = 0.3, a1 = 0.03 + 0.9/3 * 0.3 = 0.12, a0 = 0.04 + 0.3 * 0.12 = 0.076
    # rows 1 and 2 (lambda 0): each token's own TD error, the env token skipped
    torch.testing.assert_close(adv, torch.tensor([[0.076, 0.12, 0.3], [0.13, 0.0, 0.3], [0.04, 0.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.81, 0.9, 1.0], [0.9, 0.0, 1.0], [0.9, 1.0, 0.0]]))
    long = compute_advantages(batch, replace(cfg, vapo_alpha=1e9), "vapo_gae")[0]  # lambda -> 1: plain GAE at 1
    torch.testing.assert_close(long, compute_advantages(batch, replace(cfg, lam=1.0), "gae")[0])


@pytest.mark.parametrize("name,field", [("gae", "values"), ("vapo_gae", "values"), ("remax", "baseline_rewards")])
def test_missing_required_field_is_a_clear_error(name, field):
    with pytest.raises(ValueError, match=field):
        compute_advantages(make_batch([1.0], [0], [1]), CFG, name)


@pytest.mark.parametrize("name", [e.name for e in ADVANTAGES if not e.meta.get("requires")])
def test_every_outcome_estimator_is_zero_on_padding_and_uniform_groups(name):
    batch = make_batch([1.0, 1.0, 0.0, 1.0], [0, 0, 1, 1], [1, 3, 2, 1], width=4)
    adv, _ = ADVANTAGES[name](batch, replace(CFG, whiten_advantages=False))
    assert torch.equal(adv * (1 - batch.response_mask), torch.zeros(4, 4))
    if name != "reinforce_plus_plus":  # no group baseline there: the raw return is the advantage
        assert torch.equal(adv[:2], torch.zeros(2, 4))
