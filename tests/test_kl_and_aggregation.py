"""Aggregation modes, KL estimators (incl. straight-through "+"), KL controllers, KL penalty/loss, entropy."""
import json
import math
import textwrap
from dataclasses import replace

import pytest
import torch
from dist_scripts.launch import start_torchrun, wait_torchrun

from rllava.algorithms import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    apply_kl_penalty,
    entropy_loss,
    kl_loss,
    make_kl_controller,
)
from rllava.config import AlgorithmConfig
from rllava.registry import UnknownNameError

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 7 / 3),               # (1 + 2 + 4) / 3 tokens
    ("seq-mean-token-sum", 3.5),         # (3 + 4) / 2
    ("seq-mean-token-mean", 2.75),       # (1.5 + 4) / 2
    ("seq-mean-token-sum-norm", 7 / 6),  # (3/3 + 4/3) / 2, constant = width 3
])
def test_aggregation_hand_values(mode, expected):
    assert float(aggregate(X, MASK, mode)) == pytest.approx(expected)


def test_sum_norm_uses_given_constant_and_empty_rows_count_as_zero():
    assert float(aggregate(X, MASK, "seq-mean-token-sum-norm", norm_len=10)) == pytest.approx(0.35)
    x, mask = torch.tensor([[1.0, 2.0], [5.0, 5.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert float(aggregate(x, mask, "seq-mean-token-mean")) == pytest.approx(0.75)
    assert float(aggregate(x, mask, "token-mean")) == pytest.approx(1.5)


def test_inf_on_padding_stays_out():
    x = torch.tensor([[1.0, float("inf")], [2.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    for mode in AGGREGATIONS.names():
        assert math.isfinite(float(aggregate(x, mask, mode)))


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_micro_batches_sum_back_to_the_batch_loss_with_unit_weights(mode):
    """The `unit` meta tells the actor how to weight micro-batches; check it is exact."""
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    mask = torch.tensor([[1.0] * 5, [1.0, 1, 0, 0, 0], [1.0, 0, 0, 0, 0], [1.0, 1, 1, 0, 0]])
    full = aggregate(x, mask, mode)
    unit = AGGREGATIONS.entry(mode).meta["unit"]
    total = 0.0
    for rows, width in (([0, 1], 5), ([2, 3], 3)):  # the second micro-batch is trimmed to width 3
        xm, mm = x[rows, :width], mask[rows, :width]
        weight = float(mm.sum() / mask.sum()) if unit == "token" else len(rows) / 4
        total += weight * float(aggregate(xm, mm, mode, norm_len=5))
    assert total == pytest.approx(float(full), abs=1e-6)


def test_aggregation_errors_are_clear():
    with pytest.raises(UnknownNameError, match="token-mean"):
        aggregate(X, MASK, "token_mean")
    with pytest.raises(ValueError, match="shape"):
        aggregate(X, MASK[:, :2], "token-mean")


# d = logp - ref = [0.5, -1, 0]
LOGP = torch.tensor([-1.0, -2.0, -0.7])
REF = torch.tensor([-1.5, -1.0, -0.7])


@pytest.mark.parametrize("name,expected", [
    ("k1", [0.5, -1.0, 0.0]),
    ("k2", [0.125, 0.5, 0.0]),
    ("k3", [0.106531, 0.718282, 0.0]),  # exp(-d) + d - 1
    ("abs", [0.5, 1.0, 0.0]),
])
def test_kl_estimator_values(name, expected):
    torch.testing.assert_close(KL_ESTIMATORS[name](LOGP, REF), torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(KL_ESTIMATORS[name + "+"](LOGP, REF), torch.tensor(expected), atol=1e-6, rtol=0)


def test_k3_gradient_and_straight_through_gradient():
    logp = LOGP.clone().requires_grad_(True)
    (g3,) = torch.autograd.grad(KL_ESTIMATORS["k3"](logp, REF).sum(), logp)
    torch.testing.assert_close(g3, torch.tensor([0.393469, -1.718282, 0.0]), atol=1e-6, rtol=0)  # 1 - exp(-d)
    for name in ("k1+", "k3+", "abs+"):
        (g,) = torch.autograd.grad(KL_ESTIMATORS[name](logp, REF).sum(), logp)
        torch.testing.assert_close(g, torch.tensor([0.5, -1.0, 0.0]))  # k2's gradient: d


def test_k3_is_clamped():
    assert float(KL_ESTIMATORS["k3"](torch.tensor([-40.0]), torch.tensor([0.0]))) == 10.0


def test_kl_controllers():
    fixed = FixedKLController(0.3)
    fixed.update(5.0, 100)
    assert fixed.value == 0.3
    ctrl = AdaptiveKLController(0.1, target=0.1, horizon=100)
    ctrl.update(0.2, 10)  # error clipped to +0.2 -> x 1.02
    assert ctrl.value == pytest.approx(0.102)
    ctrl.update(0.05, 10)  # error -0.5 clipped to -0.2 -> x 0.98
    assert ctrl.value == pytest.approx(0.09996)
    cfg = replace(AlgorithmConfig(), kl_ctrl="adaptive", kl_coef=0.05)
    assert isinstance(make_kl_controller(cfg), AdaptiveKLController) and make_kl_controller(cfg).value == 0.05
    with pytest.raises(UnknownNameError, match="adaptive"):
        make_kl_controller(replace(cfg, kl_ctrl="adaptiv"))


DIFF = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
PEN_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_apply_kl_penalty_in_reward():
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    ref = torch.zeros(2, 3)
    new, mean_kl = apply_kl_penalty(token_rewards, DIFF, ref, PEN_MASK, coef=0.5, estimator="k1")
    torch.testing.assert_close(new, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, 0.75, 0.0]]))
    assert mean_kl == pytest.approx((0.2 + 0.45) / 2)  # per-sequence mean, then batch mean


def test_kl_mean_leaves_out_rows_without_trained_tokens():
    """A cut rollout under mask_truncated trains no token: it has no KL to average in (it pulled the mean, and
    the adaptive coefficient, toward 0)."""
    logp = torch.full((2, 2), 0.2)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    _, mean_kl = apply_kl_penalty(torch.zeros(2, 2), logp, torch.zeros(2, 2), mask, coef=0.1, estimator="k1")
    assert mean_kl == pytest.approx(0.2)


def test_kl_in_reward_leaves_hint_tokens_alone():
    """UFT: hint tokens were forced from the demonstration, not sampled from the policy, so they carry no KL
    sample (the objective's KL covers the generated part). Two hinted rollouts of reward 1 that differ from the
    reference only on row 0's hint: their scores stay equal, so GRPO's advantages are 0."""
    from rllava.config import AlgorithmConfig
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.rlvr import kl_in_reward, rl_advantages

    algo = AlgorithmConfig(adv_estimator="grpo", demonstrations="hint", kl_in="reward", kl_coef=0.1)
    episodes = [Episode(prompt=Prompt(input_ids=[1, 2]), response_ids=[5, 6, 7, 8], response_mask=[1, 1, 1, 1],
                        reward=1.0, group_id=0, hint_len=2) for _ in range(2)]
    batch = Batch.from_episodes(episodes, 0)
    logp = torch.full((2, 4), -1.0)
    batch.ref_logp = logp.clone()
    batch.ref_logp[0, :2] = -3.0
    assert kl_in_reward(batch, logp, 0.1, algo) == pytest.approx(0.0)
    torch.testing.assert_close(batch.token_rewards, torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2))
    advantages, _ = rl_advantages(batch, algo)
    assert torch.equal(advantages, torch.zeros_like(advantages))


# Rank 0 holds 2 sequences of KL 1.0, rank 1 six of KL 3.0 (k1, logp - ref on every trained token), of other
# widths; then rank 1 holds none.
KL_WORKER = '''
import json
import torch
from rllava.algorithms import apply_kl_penalty
from rllava.engines import distributed as du

du.init_distributed()
rows, kl, width = [(2, 1.0, 3), (6, 3.0, 5)][du.rank()]
mask = torch.ones(rows, width)
mask[:, -1] = 0.0  # padding: it does not count
logp = torch.full((rows, width), kl)
uneven = apply_kl_penalty(torch.zeros(rows, width), logp, torch.zeros(rows, width), mask, 0.1, "k1")[1]
n = rows if du.rank() == 0 else 0
empty = apply_kl_penalty(torch.zeros(n, 4), torch.ones(n, 4), torch.zeros(n, 4), torch.ones(n, 4), 0.1, "k1")[1]
seen = du.gather_objects([uneven, empty])
if du.rank() == 0:
    open({out!r}, "w").write(json.dumps(seen))
du.destroy_distributed()
'''


def test_kl_penalty_mean_is_the_steps_per_sequence_mean_over_ranks(tmp_path):
    """The adaptive controller (and kl/mean) take the mean KL over every rank's sequences, as one process
    gives: (2 * 1.0 + 6 * 3.0) / 8 = 2.5 on both ranks, not the mean of the ranks' means (2.0). A rank with
    no sequence takes part in the collective and weighs nothing."""
    script, out = tmp_path / "worker.py", tmp_path / "kl.json"
    script.write_text(textwrap.dedent(KL_WORKER.format(out=str(out))))
    wait_torchrun(start_torchrun([str(script)], tmp_path / "log.txt"), tmp_path / "log.txt", timeout=120)
    seen = json.loads(out.read_text())
    assert [s[0] for s in seen] == pytest.approx([2.5, 2.5])
    assert [s[1] for s in seen] == pytest.approx([1.0, 1.0])


def test_kl_loss_and_entropy_loss():
    logp = DIFF.clone().requires_grad_(True)
    loss = kl_loss(logp, torch.zeros(2, 3), PEN_MASK, "k1", "token-mean")
    assert float(loss.detach()) == pytest.approx(0.3)  # (0.1 + ... + 0.5) / 5
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, PEN_MASK / 5)
    assert float(entropy_loss(X, MASK, "token-mean")) == pytest.approx(7 / 3)
    assert float(entropy_loss(X, MASK, "seq-mean-token-sum-norm", norm_len=10)) == pytest.approx(0.35)


def test_dr_grpo_divides_by_the_length_limit_not_the_longest_response(tiny_model_factory):
    """seq-mean-token-sum-norm (Dr. GRPO) divides by a constant MAX_TOKENS: the rollouts' length limit. A row's
    loss must not change with how long the other responses of its step are. On-policy, the PPO loss of a
    3-token row with advantage 1 is -3 / limit, averaged over the 2 rows; the other row has advantage 0."""
    from rllava.config import Config
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.engines.local import LocalTrainEngine
    from rllava.models.load import load_model_and_processor
    from rllava.roles.actor import Actor

    cfg = Config()
    cfg.model.path, cfg.algorithm.loss_agg_mode = str(tiny_model_factory("qwen2")), "seq-mean-token-sum-norm"
    model, _ = load_model_and_processor(cfg.model)
    actor = Actor(LocalTrainEngine(model, lr=0.0), cfg)
    p = Prompt(input_ids=[11, 12, 13])
    losses = []
    for other in (3, 20):
        batch = Batch.from_episodes([Episode(p, [20, 21, 22], [1, 1, 1]), Episode(p, [30] * other, [1] * other)], 0)
        batch.advantages = torch.zeros(batch.response_mask.shape)
        batch.advantages[0, :3] = 1.0
        losses.append(actor.update(batch, length_limit=32)["actor/loss"])
    assert losses == pytest.approx([-3 / 32 / 2] * 2, rel=1e-5)
