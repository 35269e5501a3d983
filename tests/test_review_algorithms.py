"""Review of the algorithm implementations against their papers: hand-computed values for the cases the other
test files leave open (GSPO-token with per-token advantages, SAPO's gradient off-policy, CISPO's one-sided clip)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rllava.algorithms import POLICY_LOSSES
from rllava.config import AlgorithmConfig

CFG = replace(AlgorithmConfig(), clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, loss_agg_mode="token-mean")


def run(name: str, ratios: list[list[float]], adv: list[list[float]], mask: list[list[float]],
        cfg: AlgorithmConfig = CFG, logp: list[list[float]] | None = None
        ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Loss, metrics and d loss / d logp, with old_logp chosen so that exp(logp - old_logp) == ratios."""
    lp = torch.tensor(logp if logp is not None else [[-1.0] * len(r) for r in ratios], requires_grad=True)
    old = lp.detach() - torch.log(torch.tensor(ratios))
    loss, metrics = POLICY_LOSSES[name](lp, old, torch.tensor(adv), torch.tensor(mask), cfg)
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), metrics, grad


def test_gspo_token_uses_the_sequence_ratio_with_each_tokens_own_advantage():
    """GSPO-token (Zheng et al. 2025, arXiv 2507.18071): s_{i,t} = sg[s_i] * pi_t / sg[pi_t], so every token's value
    is the sequence ratio s_i while its gradient reaches only its own log-prob, scaled by its own A_{i,t}."""
    ratios, mask = [[1.1, 1.3, 1.0]], [[1.0, 1.0, 0.0]]
    adv = [[2.0, -1.0, 0.0]]
    loss, _, grad = run("gspo", ratios, adv, mask)
    # s = exp((ln 1.1 + ln 1.3) / 2) = sqrt(1.43) = 1.195826, inside [0.8, 1.28] for both signs.
    # per token -A_t * s: -2.391652 and +1.195826; token-mean over 2 tokens = -0.597913
    assert float(loss) == pytest.approx(-0.597913, abs=1e-5)
    # d/d logp_t = -A_t * s / 2: -1.195826 and +0.597913 (not the mean advantage 0.5 on both tokens)
    torch.testing.assert_close(grad, torch.tensor([[-1.195826, 0.597913, 0.0]]), atol=1e-5, rtol=0)

    # With 1 + eps_high = 1.1 < s the clip depends on each token's sign: the A > 0 token is clipped
    # (-2 * 1.1 = -2.2, no gradient); the A < 0 token keeps min(s A, clip(s) A) = s A, unclipped.
    loss, m, grad = run("gspo", ratios, adv, mask, replace(CFG, clip_ratio_high=0.1))
    assert float(loss) == pytest.approx((-2.2 + 1.195826) / 2, abs=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.597913, 0.0]]), atol=1e-5, rtol=0)
    assert m["clip_frac_high"] == pytest.approx(0.5)


def test_sapo_gradient_off_policy_is_the_soft_gate_weight():
    """SAPO (Gao et al. 2025, arXiv 2511.20347): d/d logp of -A (4/tau) sigmoid(tau (r - 1)) is -A * 4p(1-p) * r,
    p = sigmoid(tau (r - 1)): the damping weight the paper derives, checked where r != 1."""
    loss, _, grad = run("sapo", [[1.2, 0.9]], [[1.0, -1.0]], [[1.0, 1.0]])
    # A > 0, tau_pos = 1: p = sigmoid(0.2) = 0.549834, 4p(1-p) = 0.990066; grad = -0.990066 * 1.2 / 2 = -0.594040
    # A < 0, tau_neg = 1.05: p = sigmoid(-0.105) = 0.473774, 4p(1-p) = 0.997249; grad = +0.997249 * 0.9 / 2 = 0.448762
    torch.testing.assert_close(grad, torch.tensor([[-0.594040, 0.448762]]), atol=1e-5, rtol=0)
    # values: -4 * 0.549834 / 2 = -1.099668 and +4 / 1.05 * 0.473774 / 2 = 0.902427
    assert float(loss) == pytest.approx(-1.099668 + 0.902427, abs=1e-5)


def test_cispo_one_sided_clip_as_in_minimax_m1():
    """CISPO (MiniMax-M1, arXiv 2506.13585) bounds the detached IS weight from above only; clip_ratio_low=1.0
    gives that (lower bound 0). Loss -sg(w) A logp, token mean."""
    cfg = replace(CFG, clip_ratio_low=1.0)
    loss, m, grad = run("cispo", [[0.5, 1.0, 1.5]], [[1.0, -1.0, 2.0]], [[1.0, 1.0, 1.0]], cfg,
                        logp=[[-1.0, -2.0, -0.5]])
    # w = [0.5 (not floored to 0.8), 1.0, min(1.5, 1.28) = 1.28]
    # -w A logp = [-0.5*1*-1, -1*-1*-2, -1.28*2*-0.5] = [0.5, -2.0, 1.28]; mean = -0.22 / 3
    assert float(loss) == pytest.approx(-0.22 / 3, abs=1e-6)
    # gradient -w A / 3 on every token, the clipped one included
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 1.0, -2.56]]) / 3)
    assert m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == pytest.approx(1 / 3)
