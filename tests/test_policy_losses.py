"""Policy losses against hand-computed values and gradients, plus equivalence tests."""
import logging
import math
from dataclasses import replace

import pytest
import torch

from rllava.algorithms import AGGREGATIONS, POLICY_LOSSES
from rllava.config import AlgorithmConfig, ConfigError

CFG = replace(AlgorithmConfig(), clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)


def leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def run(name, logp, old_logp, adv, mask, cfg=CFG, **extra):
    """Loss, metrics and d loss / d logp."""
    loss, metrics = POLICY_LOSSES[name](logp, old_logp, torch.tensor(adv), torch.tensor(mask), cfg, **extra)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), metrics, grad


def from_ratios(ratios, logp=None):
    """logp (leaf) and old_logp such that exp(logp - old_logp) == ratios."""
    logp = leaf(logp if logp is not None else [[-1.0] * len(r) for r in ratios])
    return logp, logp.detach() - torch.log(torch.tensor(ratios))


def test_ppo_hand_values_clip_high_low_and_dual():
    logp, old = from_ratios([[1.0, 1.5, 0.5], [0.7, 4.0, 1.0]])
    loss, m, grad = run("ppo", logp, old, [[1.0, 1.0, -1.0], [-1.0, -1.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # per token: -1 | clip high -1.28 | clip low 0.8 | clip low 0.8 | dual-clip 3 (unclipped 4); mean of 5
    assert float(loss) == pytest.approx(2.32 / 5, abs=1e-6)
    assert m["clip_frac_high"] == pytest.approx(0.2) and m["clip_frac_low"] == pytest.approx(0.4)
    assert m["clip_frac_dual"] == pytest.approx(0.2)
    # only the unclipped token moves: d(-A*ratio)/dlogp = -1, / 5 tokens
    torch.testing.assert_close(grad, torch.tensor([[-0.2, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_clip_higher_is_asymmetric():
    logp, old = from_ratios([[1.25, 0.75]])
    loss, m, _ = run("ppo", logp, old, [[1.0, -1.0]], [[1.0, 1.0]])
    # 1.25 < 1 + 0.28 stays unclipped (-1.25); 0.75 < 1 - 0.2 is clipped to 0.8 (loss 0.8)
    assert float(loss) == pytest.approx((-1.25 + 0.8) / 2, abs=1e-6)
    assert m["clip_frac_high"] == 0.0 and m["clip_frac_low"] == 0.5
    sym, _, _ = run("ppo", logp, old, [[1.0, -1.0]], [[1.0, 1.0]], replace(CFG, clip_ratio_high=0.2))
    assert float(sym) == pytest.approx((-1.2 + 0.8) / 2, abs=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    logp, old = from_ratios([[10.0]])
    capped, _, grad = run("ppo", logp, old, [[-1.0]], [[1.0]])
    assert float(capped) == pytest.approx(3.0) and float(grad) == 0.0
    uncapped, m, _ = run("ppo", logp, old, [[-1.0]], [[1.0]], replace(CFG, clip_ratio_c=None))
    assert float(uncapped) == pytest.approx(10.0, rel=1e-5) and "clip_frac_dual" not in m


def test_tis_weights_scale_the_loss():
    logp, old = from_ratios([[1.0, 1.0, 1.0]])
    mask = [[1.0, 1.0, 0.0]]
    # old - rollout = ln 0.5, ln 4 (capped to 2), and +100 on padding (must not overflow)
    rollout = old.detach() - torch.tensor([[math.log(0.5), math.log(4.0), 100.0]])
    cfg = replace(CFG, tis_cap=2.0)
    loss, m, grad = run("ppo", logp, old, [[1.0, 1.0, 1.0]], mask, cfg, rollout_logp=rollout)
    assert float(loss) == pytest.approx((-0.5 - 2.0) / 2, abs=1e-6)
    assert m["tis_weight_mean"] == pytest.approx(1.25)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, -1.0, 0.0]]))
    plain, _, _ = run("ppo", logp, old, [[1.0, 1.0, 1.0]], mask, CFG, rollout_logp=rollout)  # tis_cap None: ignored
    assert float(plain) == pytest.approx(-1.0)


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", ["ppo", "sapo"])
def test_on_policy_gradient_equals_policy_gradient(name, mode):
    torch.manual_seed(0)
    logp = leaf(torch.randn(3, 4).tolist())
    adv = torch.randn(3, 4).tolist()
    mask = [[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    cfg = replace(CFG, loss_agg_mode=mode)
    _, m, grad = run(name, logp, logp.detach(), adv, mask, cfg)
    _, _, pg_grad = run("gpg", logp, logp.detach(), adv, mask, cfg)  # -A * logp
    torch.testing.assert_close(grad, pg_grad)
    assert m["ratio_mean"] == pytest.approx(1.0) and m["approx_kl"] == pytest.approx(0.0)
    # and the PG gradient itself, written out for token-mean: -A / number of trained tokens
    if mode == "token-mean":
        torch.testing.assert_close(pg_grad, -torch.tensor(adv) * torch.tensor(mask) / 8)


def test_gspo_on_one_token_sequences_equals_ppo():
    logp, old = from_ratios([[0.5], [0.9], [1.1], [1.5], [1.0]])
    adv, mask = [[1.0], [-1.0], [1.0], [2.0], [-0.5]], [[1.0]] * 5
    cfg = replace(CFG, clip_ratio_c=None)
    gspo_loss, _, gspo_grad = run("gspo", logp, old, adv, mask, cfg)
    ppo_loss, _, ppo_grad = run("ppo", logp, old, adv, mask, cfg)
    torch.testing.assert_close(gspo_loss, ppo_loss)
    torch.testing.assert_close(gspo_grad, ppo_grad)


def test_gspo_sequence_ratio_hand_values():
    logp, old = from_ratios([[1.1, 1.3, 1.0]])
    mask = [[1.0, 1.0, 0.0]]
    loss, _, grad = run("gspo", logp, old, [[1.0, 1.0, 0.0]], mask)
    # s = sqrt(1.1 * 1.3) = 1.195826, unclipped (< 1.28); every token's gradient is -s / 2 tokens
    assert float(loss) == pytest.approx(-1.195826, abs=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-0.597913, -0.597913, 0.0]]))
    clipped, m, grad = run("gspo", logp, old, [[1.0, 1.0, 0.0]], mask, replace(CFG, clip_ratio_high=0.1))
    assert float(clipped) == pytest.approx(-1.1, abs=1e-6) and m["clip_frac_high"] == 1.0
    assert torch.equal(grad, torch.zeros(1, 3))


def test_gmpo_geometric_mean_with_sign_aware_log_clip():
    logp = leaf([[-1.0, -1.0], [-1.0, -1.0]])
    old = logp.detach() - torch.tensor([[0.1, 0.5], [-0.5, 0.3]])
    cfg = replace(CFG, loss_agg_mode="seq-mean-token-mean")
    loss, m, grad = run("gmpo", logp, old, [[1.0, 1.0], [-1.0, -1.0]], [[1.0, 1.0], [1.0, 1.0]], cfg)
    # A>0: log-ratios [0.1, min(0.5, 0.28)] -> exp(0.19) = 1.209250; A<0: [max(-0.5, -0.2), 0.3] -> exp(0.05) = 1.051271
    assert float(loss) == pytest.approx((-1.209250 + 1.051271) / 2, abs=1e-5)
    # d/d lr of -A*exp(mean lr) = -A*ratio/2, halved again by the mean over 2 sequences; clipped tokens get 0
    torch.testing.assert_close(grad, torch.tensor([[-0.302312, 0.0], [0.0, 0.262818]]), atol=1e-5, rtol=0)
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25


def test_gmpo_on_policy_with_zeroed_tokens_equals_ppo():
    """Forking-token selection zeroes A on most tokens: GMPO must neither scale A down by the kept share nor move
    the zeroed tokens (it did both: A was averaged over every token, and the ratio's gradient reached them all)."""
    logp = leaf([[-1.0, -2.0, -0.5, -1.5], [-0.3, -1.0, -2.0, 0.0]])
    adv = [[2.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 0.0]]
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    cfg = replace(CFG, loss_agg_mode="seq-mean-token-mean")
    _, _, grad = run("gmpo", logp, logp.detach(), adv, mask, cfg)
    _, _, ppo_grad = run("ppo", logp, logp.detach(), adv, mask, cfg)
    torch.testing.assert_close(grad, ppo_grad)
    # by hand: -A / (tokens in the sequence) / 2 sequences, on the kept tokens only
    torch.testing.assert_close(grad, torch.tensor([[-0.25, 0.0, -0.25, 0.0], [0.0, 1 / 6, 0.0, 0.0]]))


# cov = (A - mean A) * (logp - mean logp) for A = [1, 1, -1, -1], logp = [-1, -2, -1, -2]: [0.5, -0.5, -0.5, 0.5]
COV_LOGP, COV_ADV = [[-1.0, -2.0, -1.0, -2.0]], [[1.0, 1.0, -1.0, -1.0]]


def test_clip_cov_detaches_tokens_with_cov_in_bounds():
    logp = leaf(COV_LOGP)
    cfg = replace(CFG, clip_cov_lb=0.4, clip_cov_ub=0.6, clip_cov_ratio=0.5)  # 2 of 4 tokens; both candidates
    loss, m, grad = run("clip_cov", logp, logp.detach(), COV_ADV, [[1.0] * 4], cfg)
    assert float(loss) == pytest.approx(0.0)  # values are kept: (-1 - 1 + 1 + 1) / 4
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.25, 0.25, 0.0]]))
    assert m["clip_cov_frac"] == 0.5


def test_clip_cov_random_choice_is_seeded():
    logp = leaf(COV_LOGP)
    cfg = replace(CFG, clip_cov_lb=0.4, clip_cov_ub=0.6, clip_cov_ratio=0.25)  # 1 of the 2 candidates
    grads = []
    for _ in range(2):
        torch.manual_seed(123)
        grads.append(run("clip_cov", logp, logp.detach(), COV_ADV, [[1.0] * 4], cfg)[2])
    torch.testing.assert_close(grads[0], grads[1])
    assert int((grads[0] == 0).sum()) == 1 and float(grads[0][0, 1]) == -0.25 and float(grads[0][0, 2]) == 0.25


def test_kl_cov_penalises_top_cov_token():
    logp = leaf([[-1.0, -2.0, -1.0, -2.5]])  # cov = [0.625, -0.375, -0.625, 0.875]: token 3 is the top
    old = logp.detach() - torch.tensor([[-0.1, -0.1, -0.1, 0.2]])
    cfg = replace(CFG, kl_cov_ratio=0.25, kl_cov_coef=1.0)
    loss, m, grad = run("kl_cov", logp, old, COV_ADV, [[1.0] * 4], cfg)
    # -exp(-0.1) * 2 + exp(-0.1) + (exp(0.2) + |0.2|), over 4 tokens
    assert float(loss) == pytest.approx(0.129141, abs=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-0.226209, -0.226209, 0.226209, 0.555351]]), atol=1e-5, rtol=0)
    assert m["kl_cov_frac"] == 0.25
    one, m, _ = run("kl_cov", logp, old, COV_ADV, [[1.0] * 4], replace(cfg, kl_cov_ratio=0.1))  # 0.4 tokens: still 1
    assert float(one) == pytest.approx(float(loss)) and m["kl_cov_frac"] == 0.25  # (0 would drop the trust region)
    # Tokens chosen over the step's batch arrive as extra["token_pick"]: those, not a choice over these rows alone.
    pick = torch.tensor([[True, False, False, False]])
    _, m, grad = run("kl_cov", logp, old, COV_ADV, [[1.0] * 4], cfg, token_pick=pick)
    assert m["kl_cov_frac"] == 0.25 and float(grad[0, 0]) == pytest.approx((-0.904837 - 1.0) / 4, abs=1e-5)  # lr = -0.1


def test_cispo_keeps_gradient_through_clipped_weights():
    logp, old = from_ratios([[0.5, 1.0, 1.5]], logp=[[-1.0, -2.0, -0.5]])
    loss, m, grad = run("cispo", logp, old, [[1.0, -1.0, 2.0]], [[1.0, 1.0, 1.0]])
    # weights [0.8, 1.0, 1.28] (detached): loss = mean(-w*A*logp) = (0.8 - 2 + 1.28) / 3
    assert float(loss) == pytest.approx(0.08 / 3, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.8, 1.0, -2.56]]) / 3)
    assert m["clip_frac_low"] == pytest.approx(1 / 3) and m["clip_frac_high"] == pytest.approx(1 / 3)


def test_sapo_soft_gate_hand_values():
    logp, old = from_ratios([[1.2, 0.9]])
    loss, _, _ = run("sapo", logp, old, [[1.0, -1.0]], [[1.0, 1.0]])
    # -4/1 * sigmoid(0.2) = -2.199336 ; +4/1.05 * sigmoid(1.05 * -0.1) = 1.804854
    assert float(loss) == pytest.approx((-2.199336 + 1.804854) / 2, abs=1e-5)


def test_gpg_and_sft():
    logp = leaf([[-1.0, -2.0], [-0.5, -3.0]])
    mask = [[1.0, 1.0], [1.0, 0.0]]
    loss, _, grad = run("gpg", logp, logp.detach(), [[2.0, 2.0], [-1.0, -1.0]], mask)
    assert float(loss) == pytest.approx((2 + 4 - 0.5) / 3)
    torch.testing.assert_close(grad, torch.tensor([[-2.0, -2.0], [1.0, 0.0]]) / 3)
    loss, m, grad = run("sft", logp, logp.detach(), [[9.0, 9.0], [9.0, 9.0]], mask)
    assert float(loss) == pytest.approx(3.5 / 3) and m["nll"] == pytest.approx(3.5 / 3)
    torch.testing.assert_close(grad, -torch.tensor(mask) / 3)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_garbage_on_padding_does_not_leak(name):
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logp = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, 0.0, 0.0]])
    old = logp + torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    junk = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    entropy = torch.tensor([[0.5, 0.7, 0.0], [0.2, 0.0, 0.0]])
    cfg = replace(CFG, tis_cap=2.0)
    clean = POLICY_LOSSES[name](logp, old, adv, mask, cfg, rollout_logp=old, entropy=entropy)[0]
    dirty = POLICY_LOSSES[name](logp - 1e4 * junk, old + 1e4 * junk, adv + 50 * junk, mask, cfg,
                                rollout_logp=old - 1e4 * junk, entropy=entropy + 1e4 * junk)[0]
    assert torch.isfinite(dirty) and float(dirty) == pytest.approx(float(clean), abs=1e-6)


@pytest.mark.parametrize("mode,expected", [
    # ratios 0.3, 1, 2.5, 6 on row 0 (product 4.5) and 2, 3, 2, padding on row 1 (product 12); bounds [0.5, 5]
    ("token_truncate", [[0.5, 1.0, 2.5, 5.0], [2.0, 3.0, 2.0, 0.0]]),
    ("token_mask", [[0.0, 1.0, 2.5, 0.0], [2.0, 3.0, 2.0, 0.0]]),
    ("sequence_truncate", [[4.5] * 4, [5.0, 5.0, 5.0, 0.0]]),
    ("sequence_mask", [[4.5] * 4, [0.0, 0.0, 0.0, 0.0]]),
])
def test_rollout_correction_modes(mode, expected):
    """With tis_cap set, each mode weighs the on-policy PPO loss -A * ratio (= -1 a token) by its weights."""
    logp, old = from_ratios([[1.0] * 4, [1.0] * 4])
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    rho = torch.tensor([[0.3, 1.0, 2.5, 6.0], [2.0, 3.0, 2.0, 1e30]])  # padding: huge, must not leak
    rollout = old.detach() - torch.log(rho)
    cfg = replace(CFG, tis_cap=5.0, tis_floor=0.5, tis_mode=mode)
    loss, m, grad = run("ppo", logp, old, [[1.0] * 4, [1.0] * 4], mask, cfg, rollout_logp=rollout)
    w = torch.tensor(expected) * torch.tensor(mask)
    torch.testing.assert_close(grad, -w / 7)  # token-mean over 7 tokens; the weights carry no gradient
    assert float(loss) == pytest.approx(-float(w.sum()) / 7, rel=1e-5)
    assert m["tis_weight_mean"] == pytest.approx(float(w.sum()) / 7, rel=1e-5)
    if mode.endswith("mask"):
        assert m["tis_masked_frac"] == pytest.approx(float(((w == 0) & (torch.tensor(mask) > 0)).sum()) / 7)
    else:
        assert "tis_masked_frac" not in m


def test_rollout_correction_settings_are_checked_at_load():
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.run import check_names

    with pytest.raises(ConfigError, match="need 0 <= tis_floor < tis_cap"):
        load_config(None, ["algorithm.tis_cap=2", "algorithm.tis_floor=3"])
    with pytest.raises(ConfigError, match="algorithm.tis_mode: unknown is_correction 'icepop'"):
        check_names(load_config(None, ["algorithm.tis_cap=5", "algorithm.tis_mode=icepop"]))


def _plugin_loss_update(tiny_model_factory, loss, **algo):
    """One actor update of the fixed 8-row batch (tests/dist_scripts/engine_fixes_worker.py) with `loss` as a
    plugin policy loss registered for this test (a name: that built-in loss)."""
    from dist_scripts import engine_fixes_worker as worker
    from transformers import AutoModelForCausalLM

    from rllava.algorithms import POLICY_LOSSES
    from rllava.engines.local import LocalTrainEngine
    from rllava.roles.actor import Actor

    name = loss if isinstance(loss, str) else f"test_plugin_{loss.__name__}"
    if name not in POLICY_LOSSES:
        POLICY_LOSSES.register(name, requires=())(loss)
    path = str(tiny_model_factory("qwen2"))
    cfg = worker.actor_config(path, 8)
    cfg.algorithm.policy_loss = name
    for k, v in algo.items():
        setattr(cfg.algorithm, k, v)
    batch = worker.make_batch()
    batch.rollout_logp = torch.zeros(batch.responses.shape)
    return Actor(LocalTrainEngine(AutoModelForCausalLM.from_pretrained(path), lr=1e-3), cfg).update(batch)


def per_token(logp, old_logp, advantages, mask, cfg, **extra):
    return -advantages * logp * mask, {}  # not reduced


def uncorrected(logp, old_logp, advantages, mask, cfg, **extra):
    from rllava.algorithms import aggregate

    return aggregate(-advantages * logp, mask, cfg.loss_agg_mode, extra.get("norm_len")), {}


def test_a_plugin_loss_that_is_not_a_scalar_is_named(tiny_model_factory):
    """It failed inside the actor with torch's "only one element tensors can be converted to Python scalars"."""
    with pytest.raises(ConfigError, match=r"policy_loss='test_plugin_per_token' returned a loss of shape \(8, 5\), "
                                          r"not a scalar: reduce per-token losses with rllava.algorithms.aggregate"):
        _plugin_loss_update(tiny_model_factory, per_token)


def test_a_plugin_loss_that_ignores_the_rollout_correction_is_warned_about(tiny_model_factory, caplog):
    with caplog.at_level(logging.WARNING, logger="rllava.roles.actor"):
        _plugin_loss_update(tiny_model_factory, uncorrected, tis_cap=2.0)
        _plugin_loss_update(tiny_model_factory, uncorrected, tis_cap=2.0)
    warned = [r.getMessage() for r in caplog.records if "applied no rollout correction" in r.getMessage()]
    assert len(warned) == 1 and "policy_loss='test_plugin_uncorrected'" in warned[0]  # once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rllava.roles.actor"):
        _plugin_loss_update(tiny_model_factory, uncorrected)  # no tis_cap: nothing to apply
        metrics = _plugin_loss_update(tiny_model_factory, "ppo", tis_cap=2.0)  # a built-in loss applies it
    assert not caplog.records and "actor/tis_weight_mean" in metrics
