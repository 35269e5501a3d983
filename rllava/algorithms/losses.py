"""Policy losses: `fn(logp, old_logp, advantages, mask, cfg, **extra) -> (loss, metrics)`.

Conventions:
- Losses are *minimised*: a positive advantage A makes the loss fall as log pi(token) rises,
  i.e. the per-token loss is -A * (something increasing in pi).
- All tensors are [B, T] and aligned with the response tokens; `mask` is 1.0 on trained tokens.
- ratio = pi / pi_old = exp(logp - old_logp); the log-ratio is zeroed on masked positions and
  clamped to [-20, 20] so padding never makes inf/NaN.
- The per-token loss is reduced with `aggregate(..., cfg.loss_agg_mode, extra["norm_len"])`.
- Rollout correction: when `cfg.tis_cap` is set and `extra["rollout_logp"]` is given, every per-token
  loss is multiplied by a detached weight from the ratio exp(old_logp - rollout_logp), correcting for
  the rollout engine's sampling distribution differing from the trainer's: truncated (TIS,
  min(ratio, tis_cap)) by default, or masked (IcePop), or per sequence (`cfg.tis_mode`,
  `rllava.algorithms.rollout_correction`).
- Metrics are plain floats, averaged over trained tokens: `clip_frac_low/high/dual`,
  `approx_kl` (k3 estimate of KL(pi_old || pi)), `ratio_mean`.
- `row_local=True` in a loss's registration: a row whose advantages are all 0 has zero loss and zero
  gradient, and no row's loss depends on another's, so `actor.skip_zero_advantage` may leave such rows
  out of the update with the gradient unchanged. (Not Clip-Cov and KL-Cov: their token choice is
  batch-wide; not LUFFY and SRFT: demonstration rows.)
- `token_choice=fn(cov [N], cfg, generator) -> bool [N]` in a loss's registration: the loss acts on tokens chosen
  by their covariance (A - mean A)(logp - mean logp); the pipeline chooses them over the step's whole batch
  (every rank's tokens) with the policy before the update and passes them as `extra["token_pick"]`.
"""
from __future__ import annotations

from typing import Any

import torch

from rllava.algorithms.aggregation import aggregate, masked_mean, row_mean
from rllava.algorithms.rollout_correction import rollout_weights
from rllava.registry import Registry

POLICY_LOSSES = Registry("policy_loss", "policy losses (algorithm.policy_loss): fn(logp, old_logp, adv, mask, cfg) -> (loss, metrics)")

RATIO = ("old_logp",)  # losses that use the importance ratio need old log-probs (or logp.detach() on-policy)


def _log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask != 0, logp - old_logp, torch.zeros_like(logp)).clamp(-20.0, 20.0)


def _ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor, **fracs: torch.Tensor) -> dict[str, float]:
    """approx_kl (k3), ratio_mean, and the masked fraction of every boolean tensor in `fracs`."""
    lr = log_ratio.detach()
    out = {"approx_kl": masked_mean(lr.exp() - 1 - lr, mask), "ratio_mean": masked_mean(lr.exp(), mask)}
    out.update({k: masked_mean(v.to(mask.dtype), mask) for k, v in fracs.items()})
    return {k: float(v) for k, v in out.items()}


def _finish(per_token: torch.Tensor, mask: torch.Tensor, old_logp: torch.Tensor, cfg: Any,
            extra: dict, metrics: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Apply the rollout-correction weight (if configured) and aggregate."""
    rollout_logp = extra.get("rollout_logp")
    if cfg.tis_cap is not None and rollout_logp is not None:
        w, tis_metrics = rollout_weights(old_logp, rollout_logp, mask, cfg)
        per_token = per_token * w
        metrics.update(tis_metrics)
    return aggregate(per_token, mask, cfg.loss_agg_mode, extra.get("norm_len")), metrics


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, cfg: Any, dual: bool = True):
    """PPO's pessimistic clipped objective per token, plus which tokens each clip touched."""
    low, high, c = 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high, cfg.clip_ratio_c
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))
    fracs = {"clip_frac_low": (adv < 0) & (ratio < low), "clip_frac_high": (adv > 0) & (ratio > high)}
    if dual and c is not None:
        if c <= 1:
            raise ValueError(f"algorithm.clip_ratio_c must be > 1 for dual-clip PPO, got {c}")
        # For A < 0 the unclipped loss -A*ratio grows without bound in ratio; cap it at -A*c.
        fracs["clip_frac_dual"] = (adv < 0) & (ratio > c)
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * c), loss)
    return loss, fracs


@POLICY_LOSSES.register("ppo", requires=RATIO, row_local=True)
def ppo(logp, old_logp, advantages, mask, cfg, **extra):
    """PPO clipped surrogate, asymmetric clip (clip-higher) and dual-clip for negative advantages."""
    lr = _log_ratio(logp, old_logp, mask)
    loss, fracs = clipped_surrogate(lr.exp(), advantages, cfg)
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, **fracs))


@POLICY_LOSSES.register("gspo", requires=RATIO, row_local=True)
def gspo(logp, old_logp, advantages, mask, cfg, **extra):
    """GSPO: sequence ratio exp(mean token log-ratio), clipped; token form sg(s_i) * pi / sg(pi)."""
    lr = _log_ratio(logp, old_logp, mask)
    seq_lr = lr.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    # Value = s_i at every token; gradient wrt logp_t = s_i (each token carries the sequence ratio).
    token_lr = seq_lr.detach() + logp - logp.detach()
    loss, fracs = clipped_surrogate(token_lr.exp(), advantages, cfg, dual=False)
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, **fracs))


@POLICY_LOSSES.register("gmpo", requires=RATIO, row_local=True)
def gmpo(logp, old_logp, advantages, mask, cfg, **extra):
    """GMPO: -A * geometric mean of token ratios, token log-ratios clipped sign-aware in log space.

    For A > 0 a token's log-ratio is min(lr, clip(lr)) (caps upward moves), for A < 0 it is
    max(lr, clip(lr)); clip range [-clip_ratio_low, clip_ratio_high] in log space (the paper's default is
    (-0.4, 0.4), i.e. ratios in (e^-0.4, e^0.4), wider than the config's PPO default 0.2: set both to 0.4 as
    `examples/counting_gmpo.yaml` does). The sequence loss is
    broadcast over the sequence's tokens: `seq-mean-token-mean` reproduces the paper exactly.
    Tokens whose advantage is 0 (not forking tokens, `algorithm.top_entropy_frac`) carry no gradient and do not
    dilute A: the log-mean keeps its 1/|sequence|, so on-policy the gradient equals PPO's with those tokens zeroed.
    """
    lr = _log_ratio(logp, old_logp, mask)
    sign = torch.sign(advantages)
    clipped = sign * torch.minimum(sign * lr, sign * lr.clamp(-cfg.clip_ratio_low, cfg.clip_ratio_high))
    carry = mask * (advantages != 0)
    n = mask.sum(-1).clamp(min=1)
    seq_ratio = ((clipped * carry).sum(-1) / n).exp()
    seq_adv = (advantages * carry).sum(-1) / carry.sum(-1).clamp(min=1)
    loss = (-seq_adv * seq_ratio)[:, None].expand_as(mask)
    fracs = {"clip_frac_low": (advantages < 0) & (lr < -cfg.clip_ratio_low),
             "clip_frac_high": (advantages > 0) & (lr > cfg.clip_ratio_high)}
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, **fracs))


def centered_cov(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor,
                 means: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-token covariance term (A - mean A) * (logp - mean logp), detached; the means over trained tokens, or
    `means` = (mean A, mean logp) over a larger batch (the step's, every rank's)."""
    a, lp = advantages.detach(), logp.detach()
    mean_a, mean_lp = means if means is not None else (masked_mean(a, mask), masked_mean(lp, mask))
    return (a - mean_a) * (lp - mean_lp)


def clip_cov_choice(cov: torch.Tensor, cfg: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """Clip-Cov's tokens among `cov` (1-D, one per trained token): a random clip_cov_ratio share of all of them,
    drawn from those with cov in [clip_cov_lb, clip_cov_ub] (at least one when any is)."""
    cand = ((cov >= cfg.clip_cov_lb) & (cov <= cfg.clip_cov_ub)).nonzero().squeeze(-1)
    n_pick = min(max(int(cfg.clip_cov_ratio * cov.numel()), 1), cand.numel())
    picked = torch.zeros(cov.numel(), dtype=torch.bool)
    picked[cand.cpu()[torch.randperm(cand.numel(), generator=generator)[:n_pick]]] = True
    return picked.to(cov.device)


def kl_cov_choice(cov: torch.Tensor, cfg: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """KL-Cov's tokens among `cov` (1-D): the top kl_cov_ratio share by covariance (at least one)."""
    picked = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if cov.numel():
        picked[cov.topk(min(cov.numel(), max(1, int(cfg.kl_cov_ratio * cov.numel())))).indices] = True
    return picked


def _picked(advantages, logp, mask, cfg, extra, choice) -> torch.Tensor:
    """[B, T] bool: `extra["token_pick"]` (chosen over the step's whole batch by the pipeline, so that micro-batching
    does not change it), else chosen here over these tokens alone."""
    if extra.get("token_pick") is not None:
        return extra["token_pick"].bool() & (mask > 0)
    on = mask > 0
    picked = torch.zeros_like(on)
    picked[on] = choice(centered_cov(advantages, logp, mask)[on], cfg, extra.get("generator"))
    return picked


@POLICY_LOSSES.register("clip_cov", requires=RATIO, token_choice=clip_cov_choice)
def clip_cov(logp, old_logp, advantages, mask, cfg, **extra):
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): PPO clip, and the gradient of a random clip_cov_ratio share of
    tokens with covariance in [lb, ub] is detached. (The paper's formula writes the unclipped ratio * A; keeping
    PPO's clip on the other tokens follows the authors' veRL implementation, `compute_policy_loss_clip_cov`.)
    Chosen with the policy before the update (every token unclipped), over the step's batch; the choice uses
    `extra["generator"]` (else torch's global one)."""
    lr = _log_ratio(logp, old_logp, mask)
    loss, fracs = clipped_surrogate(lr.exp(), advantages, cfg, dual=False)
    picked = _picked(advantages, logp, mask, cfg, extra, clip_cov_choice)
    loss = torch.where(picked, loss.detach(), loss)
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, clip_cov_frac=picked, **fracs))


@POLICY_LOSSES.register("kl_cov", requires=RATIO, token_choice=kl_cov_choice)
def kl_cov(logp, old_logp, advantages, mask, cfg, **extra):
    """KL-Cov: unclipped -A*ratio, plus kl_cov_coef*|logp - old_logp| on the top kl_cov_ratio tokens by covariance
    (chosen over the step's batch, at least one)."""
    lr = _log_ratio(logp, old_logp, mask)
    loss = -advantages * lr.exp()
    picked = _picked(advantages, logp, mask, cfg, extra, kl_cov_choice)
    loss = loss + picked.to(loss.dtype) * cfg.kl_cov_coef * lr.abs()
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, kl_cov_frac=picked))


@POLICY_LOSSES.register("cispo", requires=RATIO, row_local=True)
def cispo(logp, old_logp, advantages, mask, cfg, **extra):
    """CISPO: -sg(clip(ratio, 1-low, 1+high)) * A * logp (every token keeps a gradient).

    MiniMax-M1 (arXiv 2506.13585, the CISPO objective) sets no lower bound on the IS weight (eps_low "large")
    and tunes only eps_high; here both bounds come from `clip_ratio_low`/`clip_ratio_high` (default 0.2 each, PPO's),
    so the default also floors the weight at 0.8. Set `clip_ratio_low=1.0` for the paper's one-sided clip.
    The paper averages over all tokens of the batch (`loss_agg_mode=token-mean`, the default).
    """
    lr = _log_ratio(logp, old_logp, mask)
    ratio = lr.exp().detach()
    low, high = 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high
    loss = -ratio.clamp(low, high) * advantages * logp
    fracs = {"clip_frac_low": ratio < low, "clip_frac_high": ratio > high}
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, **fracs))


@POLICY_LOSSES.register("sapo", requires=RATIO, row_local=True)
def sapo(logp, old_logp, advantages, mask, cfg, **extra):
    """SAPO soft gate: -A * (4/tau) * sigmoid(tau * (ratio - 1)), tau = sapo_tau_pos if A > 0 else sapo_tau_neg.

    Gao et al. 2025 (arXiv 2511.20347). The gradient is A * 4p(1-p) * ratio * grad logp with
    p = sigmoid(tau (ratio - 1)): exactly the policy gradient on-policy (ratio 1 -> weight 1),
    smoothly damped as the ratio leaves 1; the larger tau_neg damps negative tokens faster.
    The defaults tau_pos = 1.0, tau_neg = 1.05 are the paper's. The paper averages each sequence's tokens
    (1/|y_i|, GRPO's form: `loss_agg_mode=seq-mean-token-mean`); the config default is token-mean.
    """
    lr = _log_ratio(logp, old_logp, mask)
    tau = torch.where(advantages > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg).to(lr.dtype)
    loss = -advantages * (4.0 / tau) * torch.sigmoid(tau * (lr.exp() - 1))
    return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask))


@POLICY_LOSSES.register("gpg", requires=(), row_local=True)
def gpg(logp, old_logp, advantages, mask, cfg, **extra):
    """GPG / vanilla policy gradient: -A * logp, no ratio and no clipping."""
    return _finish(-advantages * logp, mask, old_logp, cfg, extra, {})


@POLICY_LOSSES.register("luffy", requires=RATIO)
def luffy(logp, old_logp, advantages, mask, cfg, **extra):
    """LUFFY (Yan et al. 2025, arXiv 2504.14945): GRPO on groups that mix rollouts and demonstrations.

    Rollout rows take PPO's clipped surrogate. Demonstration rows (`extra["is_expert"]`, [B] bool)
    have no behaviour log-probs, so LUFFY takes pi itself as their ratio, reshaped by
    f(pi) = pi / (pi + luffy_gamma) and never clipped: the per-token loss is -A * f(pi), whose
    gradient -A * gamma / (pi + gamma)^2 * grad pi weighs the expert's low-probability tokens up.
    """
    lr = _log_ratio(logp, old_logp, mask)
    loss, fracs = clipped_surrogate(lr.exp(), advantages, cfg)
    is_expert = extra.get("is_expert")
    if is_expert is None or not bool(is_expert.any()):  # no demonstration in this micro-batch: plain PPO
        return _finish(loss, mask, old_logp, cfg, extra, _ratio_metrics(lr, mask, **fracs))
    expert = is_expert.to(device=mask.device, dtype=torch.bool)[:, None].expand_as(mask)
    p = torch.where(mask != 0, logp, torch.zeros_like(logp)).exp()  # padding never makes inf/NaN
    loss = torch.where(expert, -advantages * p / (p + cfg.luffy_gamma), loss)
    metrics = _ratio_metrics(lr, mask * ~expert, **fracs)  # ratio statistics of the rollout tokens
    metrics["expert_prob_mean"] = float(masked_mean(p.detach(), mask * expert))
    return _finish(loss, mask, old_logp, cfg, extra, metrics)


@POLICY_LOSSES.register("srft", requires=RATIO)
def srft(logp, old_logp, advantages, mask, cfg, **extra):
    """SRFT's RL terms (Fu et al. 2025, arXiv 2506.19767); its SFT term is `sft_token_weight=srft`.

    Demonstration rows (`extra["is_expert"]`) take PPO's clipped surrogate with the behaviour policy
    taken as 1 (pi_beta = 1), so their ratio is pi itself. Rollout rows take the clipped surrogate, and
    the tokens of positive-advantage rows are weighed by w_RL = srft_rl_coef * exp(s * H): H is the row's
    mean policy entropy (no gradient), s = `srft_entropy_scale`. With s = +1 positive samples, which
    lower the entropy, weigh more while the entropy is high: the paper's stated purpose, keeping the
    entropy stable. The paper's self-rollout term w_RL * NLL(y+) + logp(y-) is the on-policy gradient of
    this loss with advantages +-1.
    """
    entropy = extra.get("entropy")
    if entropy is None:
        raise ValueError("policy_loss=srft needs the policy entropy of the response tokens")
    is_expert = extra.get("is_expert")
    expert = (is_expert.to(device=mask.device, dtype=torch.bool)[:, None].expand_as(mask) if is_expert is not None
              else torch.zeros_like(mask, dtype=torch.bool))
    lr = _log_ratio(logp, torch.where(expert, torch.zeros_like(old_logp), old_logp), mask)
    loss, fracs = clipped_surrogate(lr.exp(), advantages, cfg)
    positive = (advantages > 0) & ~expert
    w_rl = cfg.srft_rl_coef * torch.exp(cfg.srft_entropy_scale * row_mean(entropy.detach(), mask))
    loss = torch.where(positive, w_rl * loss, loss)
    rollout = mask * ~expert
    metrics = _ratio_metrics(_log_ratio(logp, old_logp, rollout), rollout, **fracs)
    if bool((mask * positive).any()):
        metrics["srft_positive_weight"] = float(masked_mean(w_rl.expand_as(mask), mask * positive))
    if bool(expert.any()):
        metrics["expert_prob_mean"] = float(masked_mean(lr.detach().exp(), mask * expert))
    return _finish(loss, mask, old_logp, cfg, extra, metrics)


@POLICY_LOSSES.register("sft", requires=(), rollout_correction=False)
def sft(logp, old_logp, advantages, mask, cfg, **extra):
    """Supervised NLL -logp on trained tokens; advantages (and TIS: there is no sampler) are ignored."""
    loss = aggregate(-logp, mask, cfg.loss_agg_mode, extra.get("norm_len"))
    return loss, {"nll": float(masked_mean(-logp.detach(), mask))}
