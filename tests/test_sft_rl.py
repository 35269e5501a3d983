"""SFT-RL hybrids: the LUFFY and SRFT losses, the SFT term (CHORD-phi weights, CHORD-mu schedule), UFT's hint
schedule and token split, and advantages over rollouts only against hand-computed values;
demonstrations mixed into GRPO groups (LUFFY), switched in for failing groups (HPT), trained beside
the rollouts by the SFT term (CHORD) or given as hints (UFT) end to end on a tiny Qwen2-VL, with
micro-batch splits that add up exactly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rllava.algorithms import (
    POLICY_LOSSES,
    demonstration_tokens,
    hint_ratio_at,
    rl_part,
    sft_coef_at,
    sft_loss,
    sft_part,
)
from rllava.config import AlgorithmConfig, ConfigError, load_config
from rllava.pipelines.run import run_experiment

SRFT = ("algorithm.policy_loss=srft", "algorithm.sft_token_weight=srft")


def cfg(**kw) -> AlgorithmConfig:
    return AlgorithmConfig(loss_agg_mode="token-mean", **kw)


def test_luffy_matches_hand_computed_values_and_gradients():
    # Row 0 is a rollout (A = 1, on-policy: ratio 1), row 1 a demonstration (A = 2, pi = 0.5 and 0.1).
    logp = torch.tensor([[math.log(0.4), math.log(0.7)], [math.log(0.5), math.log(0.1)]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    mask = torch.ones(2, 2)
    loss, metrics = POLICY_LOSSES.get("luffy")(logp, logp.detach(), adv, mask, cfg(luffy_gamma=0.1),
                                                is_expert=torch.tensor([False, True]))
    # rollout tokens: -A * ratio = -1; demonstration tokens: -A * p / (p + 0.1) = -2 * 5/6 and -2 * 1/2
    assert loss.item() == pytest.approx((-1 - 1 - 2 * 0.5 / 0.6 - 2 * 0.1 / 0.2) / 4, abs=1e-6)
    loss.backward()
    # d/dlogp: rollout -A * ratio = -1; demonstration -A * gamma * p / (p + gamma)^2; token mean / 4
    expected = torch.tensor([[-1.0, -1.0], [-2 * 0.1 * 0.5 / 0.36, -2 * 0.1 * 0.1 / 0.04]]) / 4
    torch.testing.assert_close(logp.grad, expected)
    assert metrics["expert_prob_mean"] == pytest.approx(0.3)
    assert metrics["ratio_mean"] == pytest.approx(1.0)


def test_luffy_never_clips_demonstrations_and_is_ppo_without_them():
    logp = torch.log(torch.tensor([[0.9, 0.9], [0.9, 0.9]]))
    old = torch.log(torch.tensor([[0.3, 0.3], [0.3, 0.3]]))  # ratio 3: far outside the clip range
    adv, mask, c = torch.ones(2, 2), torch.ones(2, 2), cfg()
    ppo, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, c)
    same, _ = POLICY_LOSSES.get("luffy")(logp, old, adv, mask, c, is_expert=None)
    assert same.item() == pytest.approx(ppo.item())
    both, _ = POLICY_LOSSES.get("luffy")(logp, old, adv, mask, c, is_expert=torch.tensor([False, True]))
    # the rollout row is clipped at 1.2; the demonstration row uses pi = 0.9 whatever the old log-probs
    assert both.item() == pytest.approx((-1.2 * 2 - 2 * 0.9 / 1.0) / 4)


def test_luffy_ignores_garbage_on_demonstration_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logp = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, 0.0, 0.0]])
    junk = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    adv, expert = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]), torch.tensor([True, True])
    clean = POLICY_LOSSES.get("luffy")(logp, logp, adv, mask, cfg(), is_expert=expert)[0]
    dirty = POLICY_LOSSES.get("luffy")(logp + 1e4 * junk, logp, adv + 50 * junk, mask, cfg(), is_expert=expert)[0]
    assert torch.isfinite(dirty) and float(dirty) == pytest.approx(float(clean))


def test_srft_loss_matches_hand_computed_values_and_gradients():
    """Rows: a rollout with A = 1 and one with A = -1 (on-policy: ratio 1), a demonstration with A = 2 and
    one with A = -1 (pi_beta = 1: the ratio is pi itself, 0.5 and 0.9 / 0.5 and 0.5)."""
    probs = torch.tensor([[0.4, 0.7], [0.3, 0.6], [0.5, 0.9], [0.5, 0.5]])
    logp = probs.log().requires_grad_()
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-1.0, -1.0]])
    entropy = torch.tensor([[0.2, 0.6], [1.0, 1.0], [0.3, 0.3], [0.1, 0.1]], requires_grad=True)
    mask, expert = torch.ones(4, 2), torch.tensor([False, False, True, True])
    c = cfg(srft_rl_coef=0.1, srft_entropy_scale=1.0)
    loss, metrics = POLICY_LOSSES.get("srft")(logp, logp.detach(), adv, mask, c, is_expert=expert, entropy=entropy)
    w = 0.1 * math.exp(0.4)  # the positive rollout's weight: its mean entropy is 0.4
    # rollout tokens: -A * ratio (times w for A > 0); demonstration A = 2: -A * p (p <= 1 < 1 + eps: never clipped);
    # demonstration A = -1 with p = 0.5 < 1 - eps: PPO's pessimistic clip holds it at -A * 0.8, a constant
    expected = [-w, -w, 1.0, 1.0, -1.0, -1.8, 0.8, 0.8]
    assert loss.item() == pytest.approx(sum(expected) / 8, abs=1e-6)
    loss.backward()
    grad = torch.tensor([[-w, -w], [1.0, 1.0], [-2 * 0.5, -2 * 0.9], [0.0, 0.0]]) / 8
    torch.testing.assert_close(logp.grad, grad)
    assert entropy.grad is None or not entropy.grad.any()  # the weight is a constant in backward
    assert metrics["srft_positive_weight"] == pytest.approx(w)
    assert metrics["expert_prob_mean"] == pytest.approx((0.5 + 0.9 + 0.5 + 0.5) / 4)
    # s = -1: the same row now weighs 0.1 * exp(-0.4)
    neg, _ = POLICY_LOSSES.get("srft")(logp.detach(), logp.detach(), adv, mask, cfg(srft_entropy_scale=-1.0),
                                       is_expert=expert, entropy=entropy)
    w_neg = 0.1 * math.exp(-0.4)
    assert neg.item() == pytest.approx((-2 * w_neg + 2 - 2.8 + 1.6) / 8, abs=1e-6)


def test_srft_is_ppo_with_unit_weight_and_no_demonstrations():
    logp = torch.log(torch.tensor([[0.9, 0.2], [0.5, 0.4]]))
    old = torch.log(torch.tensor([[0.3, 0.3], [0.6, 0.6]]))
    adv, mask = torch.tensor([[1.0, 1.0], [-0.5, -0.5]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ppo, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, cfg())
    same, _ = POLICY_LOSSES.get("srft")(logp, old, adv, mask, cfg(srft_rl_coef=1.0, srft_entropy_scale=0.0),
                                        is_expert=None, entropy=torch.rand(2, 2))
    assert same.item() == pytest.approx(ppo.item())


def test_srft_sft_weight_is_exp_minus_the_rows_mean_entropy_without_gradient_through_it():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.8, 0.9]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    entropy = torch.tensor([[0.5, 1.5, 50.0], [0.3, 0.3, 0.3]])  # padding (50) is not part of the mean
    term, mean_nll = sft_loss(logp, mask, cfg(sft_token_weight="srft"), entropy=entropy)
    w0, w1 = math.exp(-1.0), math.exp(-0.3)
    nll = [math.log(2), math.log(4), math.log(2), -math.log(0.8), -math.log(0.9)]
    assert term.item() == pytest.approx((w0 * sum(nll[:2]) + w1 * sum(nll[2:])) / 5)
    assert mean_nll == pytest.approx(sum(nll) / 5)
    term.backward()
    assert torch.allclose(logp.grad, -torch.tensor([[w0, w0, 0.0], [w1, w1, w1]]) / 5)
    with pytest.raises(ValueError, match="entropy"):
        sft_loss(logp, mask, cfg(sft_token_weight="srft"))


def test_sft_loss_is_the_mean_nll_over_demonstration_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.5, 0.8, 0.9]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    term, mean_nll = sft_loss(logp, mask, cfg())
    nll = [math.log(2), math.log(4), math.log(2), -math.log(0.8), -math.log(0.9)]
    assert term.item() == pytest.approx(sum(nll) / 5) and mean_nll == pytest.approx(sum(nll) / 5)
    term.backward()
    assert torch.allclose(logp.grad, -mask / 5)


def test_chord_phi_weighs_each_token_by_p_times_one_minus_p_without_gradient_through_it():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    term, mean_nll = sft_loss(logp, mask, cfg(sft_token_weight="chord_phi"))
    w = [0.5 * 0.5, 0.25 * 0.75, 0.0]  # p (1 - p): the certain token (p = 1) weighs nothing
    assert term.item() == pytest.approx((w[0] * math.log(2) + w[1] * math.log(4)) / 3)
    assert mean_nll == pytest.approx((math.log(2) + math.log(4)) / 3)  # the metric stays the plain NLL
    term.backward()
    assert torch.allclose(logp.grad, -torch.tensor([w]) / 3)  # the weight is a constant in backward


def test_chord_mu_schedule():
    c = cfg(sft_coef=0.5, sft_coef_warmup_steps=2, sft_coef_final=0.1, sft_coef_decay_steps=4)
    values = [sft_coef_at(c, step) for step in range(8)]
    half_way = 0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 4))
    assert values == pytest.approx([0.25, 0.5, 0.5, 0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi / 4)), half_way,
                                    0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), 0.1, 0.1])
    assert [sft_coef_at(cfg(sft_coef=0.3), s) for s in (0, 50)] == [0.3, 0.3]  # no schedule: constant


def test_uft_hint_ratio_schedule():
    c = cfg(hint_ratio_high=0.9, hint_ratio_low=0.1, hint_steps=4)
    expected = [0.1 + 0.4 * (1 + math.cos(math.pi * (t + 1) / 4)) for t in range(4)] + [0.0, 0.0]
    assert [hint_ratio_at(c, t) for t in range(6)] == pytest.approx(expected)
    assert hint_ratio_at(c, 3) == pytest.approx(0.1)  # the last hinted step is at the low end


def test_hint_tokens_go_to_the_sft_term_and_the_rest_to_rl():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    hint_len = torch.tensor([2, 0, 1])
    demo = demonstration_tokens(None, hint_len, mask)
    assert demo.tolist() == [[True, True, False, False], [False] * 4, [True, False, False, False]]
    rows, rl_mask = rl_part(mask, demo, None, "hint")
    assert rows is None and rl_mask.tolist() == [[0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]]
    sft_rows, sft_mask = sft_part(mask, demo, 1.0)
    assert sft_rows.tolist() == [0, 2] and sft_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert sft_part(mask, demo, 0.0) == (None, None)
    # a whole demonstration row (switch / sft) drops out of RL; under mix RL keeps every token
    expert = torch.tensor([False, True, False])
    rows, rl_mask = rl_part(mask, demonstration_tokens(expert, None, mask), expert, "sft")
    assert rows.tolist() == [0, 2] and torch.equal(rl_mask, mask[[0, 2]])
    assert rl_part(mask, demonstration_tokens(expert, None, mask), expert, "mix") == (None, mask)


@pytest.mark.parametrize("other_len", [4, 8, 9])
def test_an_all_hint_rollout_counts_in_its_group_whatever_the_batch_width(other_len):
    """A multi-turn UFT episode cut inside its hint is all hint (8 of 8 tokens). It is a rollout: its reward
    counts in its group however wide the other rows are (shorter, as long, longer). Group rewards
    [1, 0, 0, 1]: mean 0.5, unbiased std 0.577, so rows 0..2 get +-0.866 on their own tokens."""
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.rlvr import rl_advantages, rl_tokens

    p = Prompt(input_ids=[1, 2])
    eps = [Episode(prompt=p, response_ids=[5] * other_len, response_mask=[1] * other_len, reward=r, hint_len=1)
           for r in (1.0, 0.0, 0.0)]
    eps.append(Episode(prompt=p, response_ids=[5] * 8, response_mask=[1] * 8, reward=1.0, hint_len=8, finished=False))
    batch = Batch.from_episodes(eps, 0)
    algo = cfg(adv_estimator="grpo", demonstrations="hint")
    adv, _ = rl_advantages(batch, algo)
    assert adv[:3, 1].tolist() == pytest.approx([0.866, -0.866, -0.866], abs=1e-3)
    assert not adv[:, 0].any() and not adv[3].any()  # hint tokens have no advantage
    demo = demonstration_tokens(batch.is_expert, batch.hint_len, batch.response_mask)
    rows, own = rl_part(batch.response_mask, demo, batch.is_expert, "hint")
    assert rows is None and not own[3].any()  # the row stays (an actor per-sequence mean counts it), untrained
    assert torch.equal(rl_tokens(batch, algo), own)  # the critic's value mask


@pytest.mark.parametrize("mode", ["switch", "sft"])
@pytest.mark.parametrize("demo_len", [2, 4, 6])
def test_a_whole_demonstration_row_stays_out_of_its_group_statistics(mode, demo_len):
    """Under the SFT-only modes a demonstration row (is_expert) drops out of its group, narrower, as wide or
    wider than the rollouts: group [1, 0, 0] alone has mean 1/3, unbiased std 0.577."""
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.rlvr import rl_advantages, rl_tokens

    p = Prompt(input_ids=[1, 2])
    eps = [Episode(prompt=p, response_ids=[5] * 4, response_mask=[1] * 4, reward=r) for r in (1.0, 0.0, 0.0)]
    eps.append(Episode(prompt=p, response_ids=[9] * demo_len, response_mask=[1] * demo_len, reward=1.0, is_expert=True))
    batch = Batch.from_episodes(eps, 0)
    algo = cfg(adv_estimator="grpo", demonstrations=mode, sft_coef=0.5)
    adv, _ = rl_advantages(batch, algo)
    assert adv[:3, 0].tolist() == pytest.approx([1.155, -0.577, -0.577], abs=1e-3)
    assert not adv[3].any() and not rl_tokens(batch, algo)[3].any()
    demo = demonstration_tokens(batch.is_expert, batch.hint_len, batch.response_mask)
    rows, _ = rl_part(batch.response_mask, demo, batch.is_expert, mode)
    assert rows.tolist() == [0, 1, 2]


def test_sft_only_demonstrations_stay_out_of_the_advantages():
    """REINFORCE++ whitens over the batch: with demonstrations=sft the rollouts get exactly the advantages
    they get without the demonstrations; the demonstrations get 0."""
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.rlvr import rl_advantages

    prompt = Prompt(input_ids=[5, 6, 7])
    rollouts = [Episode(prompt=prompt, response_ids=[8] * n, response_mask=[1] * n, group_id=g, reward=r)
                for g, n, r in [(0, 2, 0.0), (0, 3, 1.0), (1, 1, 0.0), (1, 2, 0.0)]]
    demos = [Episode(prompt=prompt, response_ids=[9] * 4, response_mask=[1] * 4, group_id=g, reward=1.0,
                     is_expert=True) for g in (0, 1)]
    algo = cfg(adv_estimator="reinforce_plus_plus", demonstrations="sft", sft_coef=0.5)
    alone, _ = rl_advantages(Batch.from_episodes(rollouts, 0), algo)
    mixed, _ = rl_advantages(Batch.from_episodes(rollouts[:2] + demos[:1] + rollouts[2:] + demos[1:], 0), algo)
    assert torch.equal(mixed[[0, 1, 3, 4], :3], alone)
    assert not mixed[[2, 5]].any() and alone.abs().sum() > 0


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=24, seed=0)


def overrides(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"data.train_files={data / 'train.parquet'}", "data.val_files=",
            "data.template={{ prompt }} Answer with a number.", "data.batch_size=2", "data.shuffle=false",
            "rollout.n=3", "rollout.max_new_tokens=4", "actor.lr=3e-3", "reward.functions={count: 1.0}",
            f"trainer.output_dir={out}", "trainer.experiment_name=luffy", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]", "trainer.total_steps=4", "trainer.val_before_train=false", *extra]


def train_and_capture(over: list[str], run_dir: Path):
    """Run; return the metrics rows and the batch each RL step built from its collected episodes."""
    from rllava.data.types import Batch

    seen: list[Batch] = []
    original = Batch.from_episodes

    def spy(episodes, pad_id):
        batch = original(episodes, pad_id)
        if any(e.response_ids for e in episodes):  # not the rollout engine's prompt-only batches
            seen.append(batch)
        return batch

    Batch.from_episodes = spy
    try:
        run_experiment(load_config(None, over))
    finally:
        Batch.from_episodes = original
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()], seen


def test_luffy_run_mixes_demonstrations_into_groups(tiny_model_factory, counting_data, tmp_path):
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=mix",
                     "algorithm.policy_loss=luffy", "algorithm.sft_coef=1.0")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert len(rows) == 4 and len(seen) == 4
    for batch in seen:  # 2 groups of 3 rollouts + 1 demonstration each, the demonstration last
        assert batch.is_expert.tolist() == [False, False, False, True] * 2
        assert batch.group_ids.tolist() == [batch.group_ids[0].item()] * 4 + [batch.group_ids[4].item()] * 4
        demo = batch.episodes[3]
        assert demo.response_text == demo.prompt.meta["answer"] and demo.reward == 1.0
    for r in rows:
        assert r["reward/demo_mean"] == 1.0  # the demonstration is the right count
        assert r["response/tokens"] <= 6 * 4  # rollouts only (6 of at most 4 tokens)
        assert 0 < r["actor/expert_prob_mean"] < 1 and r["actor/demo_nll"] > 0
    # the demonstrations' NLL falls as the policy is pulled toward them (rows repeat from step 5 only)
    nll = [r["actor/demo_nll"] for r in rows]
    assert nll[-1] < nll[0], nll


def test_srft_run_trains_demonstrations_by_sft_and_off_policy_rl(tiny_model_factory, counting_data, tmp_path):
    """SRFT on mixed groups: the demonstration (reward 1 among failing rollouts) has a positive advantage,
    its ratio is pi itself, the SFT term weighs it by exp(-H), and its NLL falls."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, *SRFT, "algorithm.demonstrations=mix",
                     "algorithm.sft_coef=0.5")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    for batch in seen:
        assert batch.is_expert.tolist() == [False, False, False, True] * 2
        assert (batch.advantages[batch.is_expert] > 0).any()
    assert all(0 < r["actor/expert_prob_mean"] < 1 and r["actor/demo_nll"] > 0 for r in rows)
    nll = [r["actor/demo_nll"] for r in rows]
    assert nll[-1] < nll[0], nll


def test_hpt_switches_failing_groups_to_their_demonstration(tiny_model_factory, counting_data, tmp_path):
    # The random tiny model never counts right: every group's mean reward is 0 <= 0, so every
    # group trains on its demonstration alone, by the SFT term.
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=switch",
                     "algorithm.sft_coef=1.0", "algorithm.hpt_threshold=0.0")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert all(r["demo/switched_fraction"] == 1.0 and r["reward/mean"] == 0.0 for r in rows)
    for batch in seen:
        assert batch.is_expert.tolist() == [True, True] and len(set(batch.group_ids.tolist())) == 2
        assert torch.equal(batch.advantages, torch.zeros_like(batch.advantages))  # alone in its group
    nll = [r["actor/demo_nll"] for r in rows]
    assert nll[-1] < nll[0], nll


def test_hpt_with_a_critic_when_every_group_switched(tiny_model_factory, counting_data, tmp_path):
    """PPO (GAE) + HPT with every group switched: no rollout is left for the critic, so it waits (this crashed)."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=switch",
                     "algorithm.sft_coef=1.0", "algorithm.hpt_threshold=0.0", "algorithm.adv_estimator=gae")
    rows, _ = train_and_capture(over, tmp_path / "luffy")
    assert all(r["demo/switched_fraction"] == 1.0 and "critic/value_loss" not in r and r["actor/demo_nll"] > 0
               for r in rows)


def test_remax_baseline_reaches_luffy_demonstrations(tiny_model_factory, counting_data, tmp_path):
    """ReMax + LUFFY: a group's demonstration takes the group's greedy baseline (it had none and crashed)."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=mix",
                     "algorithm.policy_loss=luffy", "algorithm.adv_estimator=remax")
    _, seen = train_and_capture(over, tmp_path / "luffy")
    for batch in seen:
        assert batch.baseline_rewards is not None and batch.is_expert.any()
        for g in batch.group_ids.unique():
            rows = batch.group_ids == g
            assert len(set(batch.baseline_rewards[rows].tolist())) == 1  # the demonstration shares its group's


def test_hpt_keeps_rl_for_groups_above_the_threshold(tiny_model_factory, counting_data, tmp_path):
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=switch",
                     "algorithm.sft_coef=1.0", "algorithm.hpt_threshold=-1.0")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert all(r["demo/switched_fraction"] == 0.0 and "actor/demo_nll" not in r for r in rows)
    assert all(b.is_expert is None and len(b) == 6 for b in seen)  # 2 groups x 3 rollouts, as plain GRPO


@pytest.mark.parametrize("extra, message", [
    (["trainer.pipeline=sft", "algorithm.demonstrations=hint", "algorithm.hint_steps=2"], "is supervised"),
    (["algorithm.tis_cap=2.0"], "tis_cap"),
    (["algorithm.demonstrations=both"], "not one of"),
    (["algorithm.demonstrations=switch"], "sft_coef"),
    (["algorithm.demonstrations=sft"], "sft_coef"),
    (["algorithm.sft_mix=blend"], "sft_mix"),
    (["algorithm.demonstrations=hint"], "hint_steps"),
    (["algorithm.sft_mix=convex", "algorithm.sft_coef=1.5"], r"\[0, 1\]"),
])
def test_demonstrations_reject_what_they_cannot_do(tiny_model_factory, counting_data, tmp_path, extra, message):
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=mix", *extra)
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(None, over))


def test_chord_trains_demonstrations_beside_the_rollouts(tiny_model_factory, counting_data, tmp_path):
    """demonstrations=sft: each group of rollouts plus its demonstration, which gets advantage 0 and is trained
    by the SFT term alone; CHORD-mu's coefficient follows its schedule and the demonstrations' NLL falls."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=sft",
                     "algorithm.sft_coef=0.8", "algorithm.sft_mix=convex", "algorithm.sft_token_weight=chord_phi",
                     "algorithm.sft_coef_warmup_steps=1", "algorithm.sft_coef_final=0.2",
                     "algorithm.sft_coef_decay_steps=2")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert [r["demo/sft_coef"] for r in rows] == pytest.approx([0.8, 0.8, 0.5, 0.2])
    for batch in seen:
        assert batch.is_expert.tolist() == [False, False, False, True] * 2
        assert not batch.advantages[batch.is_expert].any()
    nll = [r["actor/demo_nll"] for r in rows]
    assert nll[-1] < nll[0], nll


def test_uft_rollouts_start_from_hints_that_the_sft_term_trains(tiny_model_factory, counting_data, tmp_path):
    """demonstrations=hint with the whole demonstration as the hint for 3 steps, then none: each response of
    a hinted step starts with the demonstration's tokens (the prompt is the plain one again), the SFT term
    trains them, and the 4th step is plain GRPO."""
    from transformers import AutoTokenizer

    model = tiny_model_factory("qwen2_vl")
    over = overrides(model, counting_data, tmp_path, "algorithm.demonstrations=hint", "algorithm.sft_coef=1.0",
                     "algorithm.hint_steps=3", "algorithm.hint_ratio_high=1.0", "algorithm.hint_ratio_low=1.0",
                     "data.response_template='There are {{ answer }}.'")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert [r["demo/hint_ratio"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    tok = AutoTokenizer.from_pretrained(model)
    for batch in seen[:3]:
        for i, ep in enumerate(batch.episodes):
            hint = tok(f"There are {ep.prompt.meta['answer']}.", add_special_tokens=False)["input_ids"]
            assert int(batch.hint_len[i]) == len(hint) and ep.response_ids[:len(hint)] == hint
            assert ep.response_text.startswith(f"There are {ep.prompt.meta['answer']}.")
            assert "_unhinted_prompt" not in ep.prompt.meta and ep.prompt.input_ids[-len(hint):] != hint
        hint_tokens = torch.arange(batch.response_width)[None, :] < batch.hint_len[:, None]
        assert not batch.advantages[hint_tokens].any()  # RL sees the generated tokens only
        assert batch.response_mask.sum() > batch.hint_len.sum()  # something was generated after each hint
    assert seen[3].hint_len is None
    nll = [r["actor/demo_nll"] for r in rows[:3]]
    assert "actor/demo_nll" not in rows[3] and nll[-1] < nll[0], nll


SPLIT_CASES = {"sft": (), "mix": (), "switch": (), "hint": (), "mix-srft": SRFT}  # case: its extra overrides


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_micro_batch_splits_add_up_with_demonstrations(tiny_model_factory, counting_data, tmp_path, case):
    """One row per micro-batch or all rows in one: the same loss, gradient norm and weights. The RL loss and
    the SFT term have separate denominators, so this checks both (seq-mean-token-mean averages over rows)."""
    from safetensors.torch import load_file

    mode = case.split("-")[0]
    results = {}
    for budget in (10_000, 1):
        over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, f"algorithm.demonstrations={mode}",
                         "algorithm.sft_coef=0.5", "algorithm.sft_mix=convex", "algorithm.sft_token_weight=chord_phi",
                         *SPLIT_CASES[case],
                         "algorithm.loss_agg_mode=seq-mean-token-mean", "rollout.temperature=1.0",
                         "algorithm.hpt_threshold=0.5", "algorithm.entropy_coef=0.01", f"actor.micro_token_budget={budget}",
                         "algorithm.hint_steps=2", "algorithm.hint_ratio_low=0.5", "data.response_template='There are {{ answer }}.'",
                         "trainer.total_steps=1", f"trainer.experiment_name=budget_{budget}")
        result = run_experiment(load_config(None, over))
        row = json.loads((Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
        results[budget] = row, load_file(str(Path(result["final_model"]) / "model.safetensors"))
    (whole, w_whole), (split, w_split) = results[10_000], results[1]
    keys = [k for k in ("actor/loss", "actor/grad_norm", "actor/demo_nll") if k in whole]  # switch: demos only
    assert "actor/demo_nll" in keys and all(k in split for k in keys) and whole["actor/grad_norm"] > 0
    for key in keys:
        assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    # AdamW's first step moves a weight by about lr * sign(gradient) whatever the gradient's size, so float
    # noise in near-zero gradients shows up in the weights: they agree to 5 % of one step (lr = 3e-3).
    assert max(float((w_whole[k] - w_split[k]).abs().max()) for k in w_whole) < 0.05 * 3e-3


def test_a_demonstration_template_naming_a_missing_field_fails_clearly():
    from rllava.data.rows import DataError
    from rllava.data.types import Prompt
    from rllava.pipelines.sft import sft_episodes

    with pytest.raises(DataError, match=r"^dataset row 7, field 'data.response_template': .*'solution' is undefined.*\['answer'\]"):
        sft_episodes([Prompt(input_ids=[1], meta={"answer": "3", "index": 7}, index=7)], None, "{{ solution }}", 0)
    # A null field (JSON null, a missing parquet value) would train the model to answer "None"; a blank one, nothing.
    with pytest.raises(DataError, match=r"^dataset row 7, field 'data.response_template': .*null"):
        sft_episodes([Prompt(input_ids=[1], meta={"answer": None, "index": 7}, index=7)], None, "{{ answer }}", 0)
    with pytest.raises(DataError, match=r"^dataset row 7, field 'data.response_template': .*empty text"):
        sft_episodes([Prompt(input_ids=[1], meta={"answer": " ", "index": 7}, index=7)], None, "{{ answer }}", 0)


def test_uft_hints_reach_the_extra_rounds_of_dynamic_sampling(tiny_model_factory, counting_data, tmp_path):
    """DAPO's filter judges hinted groups, and the prompts it samples in extra rounds get hints too (drawn per
    prompt and step, so a round draws as the first would)."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=hint",
                     "algorithm.sft_coef=1.0", "algorithm.hint_steps=4", "algorithm.hint_ratio_high=1.0",
                     "algorithm.hint_ratio_low=1.0", "data.response_template='There are {{ answer }}.'",
                     "algorithm.group_filter=dapo_nonuniform", "algorithm.max_filter_tries=3", "data.shuffle=true")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert any(r["filter/rollout_rounds"] > 1 for r in rows)  # some steps sampled more prompts
    for batch in seen:
        assert batch.hint_len is not None and bool((batch.hint_len > 0).all())  # every kept rollout was hinted
        for ep in batch.episodes:
            assert ep.response_text.startswith(f"There are {ep.prompt.meta['answer']}.") and "_unhinted_prompt" not in ep.prompt.meta


def test_remax_baseline_under_uft_hints_starts_from_the_hint(tiny_model_factory, counting_data, tmp_path, monkeypatch):
    """ReMax with hints: each prompt's greedy rollout continues the same hinted prompt and is scored with the hint
    at the start of its response, as the samples are."""
    from transformers import AutoTokenizer

    from rllava.roles.reward import RewardScorer

    scored: list[list] = []
    original = RewardScorer.score

    def spy(self, episodes):
        scored.append(list(episodes))
        return original(self, episodes)

    monkeypatch.setattr(RewardScorer, "score", spy)
    model = tiny_model_factory("qwen2_vl")
    over = overrides(model, counting_data, tmp_path, "algorithm.demonstrations=hint", "algorithm.sft_coef=1.0",
                     "algorithm.adv_estimator=remax", "algorithm.hint_steps=4", "algorithm.hint_ratio_high=1.0",
                     "algorithm.hint_ratio_low=1.0", "data.response_template='There are {{ answer }}.'",
                     "trainer.total_steps=2")
    rows = [json.loads(ln) for ln in (Path(run_experiment(load_config(None, over))["run_dir"]) / "metrics.jsonl")
            .read_text().splitlines()]
    assert all("reward/greedy_baseline" in r for r in rows if r["step"] > 0)
    tok = AutoTokenizer.from_pretrained(model)
    greedy = [eps for eps in scored if len(eps) == 2]  # the greedy rollouts: one per prompt (the samples: 2 x 3)
    assert len(greedy) == 2
    for ep in (e for eps in greedy for e in eps):
        hint = tok(f"There are {ep.prompt.meta['answer']}.", add_special_tokens=False)["input_ids"]
        assert ep.hint_len == len(hint) and ep.response_ids[:len(hint)] == hint
        assert ep.response_text.startswith(f"There are {ep.prompt.meta['answer']}.")


@pytest.mark.parametrize("mode", ["switch", "hint"])
def test_critic_regresses_only_the_tokens_rl_trains(tiny_model_factory, mode):
    """PPO + HPT/UFT: demonstration tokens have no return (0), so the critic must not learn V = 0 on them or
    count them in its loss. The value head starts at 0, so the first value loss is 0.5 * mean(returns^2)
    over the rollouts' own tokens, by hand."""
    from rllava.config import Config
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.roles.critic import Critic

    config = Config()
    config.model.path = str(tiny_model_factory("qwen2"))
    config.algorithm.adv_estimator, config.algorithm.demonstrations, config.algorithm.sft_coef = "gae", mode, 1.0
    config.critic.value_clip = None
    critic = Critic.build(config, torch.device("cpu"), total_steps=1)
    p = Prompt(input_ids=[11, 12, 13])
    if mode == "switch":  # a rollout, and a switched group's demonstration
        eps = [Episode(p, [20, 21, 22], [1, 1, 1]), Episode(p, [23, 24, 25], [1, 1, 1], is_expert=True)]
        returns = [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    else:  # a rollout, and one that started from a 2-token hint
        eps = [Episode(p, [20, 21, 22, 2], [1, 1, 1, 1]), Episode(p, [23, 24, 25, 26], [1, 1, 1, 1], hint_len=2)]
        returns = [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]]
    batch = Batch.from_episodes(eps, pad_id=0)
    batch.returns, batch.values = torch.tensor(returns), torch.zeros(batch.response_mask.shape)
    own = [r for row, e in zip(returns, eps) if not e.is_expert for r in row[e.hint_len:]]
    expected = 0.5 * sum(r * r for r in own) / len(own)
    assert critic.update(batch)["critic/value_loss"] == pytest.approx(expected, rel=1e-6)
