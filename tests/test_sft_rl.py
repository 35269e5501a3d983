"""SFT-RL hybrids: the LUFFY loss and the demonstration NLL against hand-computed values, and
demonstrations mixed into GRPO groups (LUFFY) or switched in for failing groups (HPT) end to end
on a tiny Qwen2-VL."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rllava.algorithms import POLICY_LOSSES, demonstration_nll
from rllava.config import AlgorithmConfig, ConfigError, load_config
from rllava.pipelines.run import run_experiment


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


def test_demonstration_nll_counts_only_demonstration_tokens_over_all_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.5, 0.25, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    nll, mean = demonstration_nll(logp, mask, torch.tensor([False, True]), cfg())
    # token-mean over the 5 trained tokens; only row 1's (ln 2 + ln 4 + 0) count
    assert nll.item() == pytest.approx((math.log(2) + math.log(4)) / 5)
    assert mean == pytest.approx((math.log(2) + math.log(4)) / 3)


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


def test_hpt_keeps_rl_for_groups_above_the_threshold(tiny_model_factory, counting_data, tmp_path):
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=switch",
                     "algorithm.sft_coef=1.0", "algorithm.hpt_threshold=-1.0")
    rows, seen = train_and_capture(over, tmp_path / "luffy")
    assert all(r["demo/switched_fraction"] == 0.0 and "actor/demo_nll" not in r for r in rows)
    assert all(b.is_expert is None and len(b) == 6 for b in seen)  # 2 groups x 3 rollouts, as plain GRPO


@pytest.mark.parametrize("extra, message", [
    (["trainer.pipeline=agentic"], "single-turn only"),
    (["algorithm.tis_cap=2.0"], "tis_cap"),
    (["algorithm.demonstrations=both"], "not one of"),
    (["algorithm.demonstrations=switch"], "sft_coef"),
])
def test_demonstrations_reject_what_they_cannot_do(tiny_model_factory, counting_data, tmp_path, extra, message):
    over = overrides(tiny_model_factory("qwen2_vl"), counting_data, tmp_path, "algorithm.demonstrations=mix", *extra)
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(None, over))
