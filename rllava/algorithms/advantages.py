"""Advantage estimators: `fn(batch, cfg) -> (advantages [B, T], returns [B, T])`.

Conventions:
- `batch.token_rewards` [B, T] holds the score at the last trained token (minus a per-token KL
  penalty when the KL is in the reward); a sequence's scalar reward is `token_rewards.sum(-1)`, or
  `batch.rewards` for a row with no trained token (`_scores`).
- `batch.response_mask` [B, T] is 1.0 on trained tokens. Every output is 0 where the mask is 0.
- Sequence-level (outcome) estimators compute one scalar per sequence and broadcast it over
  its trained tokens. For them `returns` equals `advantages` (no critic learns from it).
- Token-level recursions (GAE, discounted returns) run over trained tokens only: environment
  tokens inside a multi-turn response carry the running value through unchanged (they are not
  actions, so they neither discount nor reset it).
- A group is the set of samples with the same `batch.group_ids`. Groups whose rewards are all
  equal (single-sample groups included) get advantage exactly 0 from every group-baseline
  estimator: without a spread there is no baseline to learn against. (REINFORCE++-baseline then whitens over
  the batch, as its paper does, which shifts them by the batch mean.)
- Group std is unbiased (n - 1), like `torch.std`; whitening is over all trained tokens of the step's
  batch, and GPG's alpha counts its samples, over every rank under torchrun (`batch_sum`).
Higher advantage = the action should become more likely (losses are minimised as -A * ...).
"""
from __future__ import annotations

from typing import Any

import torch

from rllava.algorithms.aggregation import batch_mean_var, batch_sum, masked_whiten
from rllava.algorithms.groups import group_count, group_max, group_mean, group_min, group_std, group_sum, uniform_groups
from rllava.registry import Registry

ADVANTAGES = Registry("advantage", "advantage estimators (algorithm.adv_estimator): fn(batch, cfg) -> (advantages, returns)")


def _scores(batch: Any) -> torch.Tensor:
    """Each sequence's reward (with its KL penalty when that is in the reward). A row with no trained token
    (a cut rollout under `mask_truncated`) has nowhere to hold its reward in `token_rewards`, but it still
    counts in its group's statistics."""
    scores = batch.token_rewards.sum(-1)
    rewards = getattr(batch, "rewards", None)
    if rewards is None:
        return scores
    untrained = batch.response_mask.sum(-1) == 0
    return torch.where(untrained, rewards.to(scores.dtype), scores)


def _outcome(adv: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast a per-sequence advantage [B] over the trained tokens; zero for uniform groups."""
    adv = torch.where(uniform_groups(_scores(batch), batch.group_ids), torch.zeros_like(adv), adv)
    out = adv[:, None] * batch.response_mask
    return out, out


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{next trained token}, computed over trained tokens only."""
    running = rewards.new_zeros(rewards.shape[0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        on = mask[:, t] > 0
        running = torch.where(on, rewards[:, t] + gamma * running, running)
        out[:, t] = running * mask[:, t]
    return out


def gae_advantages(batch: Any, gamma: float, lam: float | torch.Tensor) -> torch.Tensor:
    """GAE over trained tokens; `lam` is one number or one per sequence ([B])."""
    r, v, mask = batch.token_rewards, batch.values, batch.response_mask
    lam = torch.as_tensor(lam, dtype=r.dtype, device=r.device).expand(r.shape[0])
    next_v, last = r.new_zeros(r.shape[0]), r.new_zeros(r.shape[0])
    adv = torch.zeros_like(r)
    for t in reversed(range(r.shape[1])):
        on = mask[:, t] > 0
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = torch.where(on, delta + gamma * lam * last, last)
        next_v = torch.where(on, v[:, t], next_v)
        adv[:, t] = last * mask[:, t]
    return adv


@ADVANTAGES.register("gae", requires=("values",))
def gae(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with a critic (gamma, lam); optional whitening."""
    adv = gae_advantages(batch, cfg.gamma, cfg.lam)
    returns = (adv + batch.values) * batch.response_mask
    return (masked_whiten(adv, batch.response_mask) if cfg.whiten_advantages else adv), returns


@ADVANTAGES.register("vapo_gae", requires=("values",))
def vapo_gae(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """VAPO: decoupled GAE, the critic's returns at lam = 1, the policy's lam = 1 - 1/(vapo_alpha * length)."""
    # Yue et al. 2025 (arXiv 2504.05118): a long response needs lam near 1 for the reward at its end to reach
    # its first tokens; a short one less. The value targets stay unbiased (lam = 1), as in VC-PPO.
    mask = batch.response_mask
    lengths = mask.sum(-1).clamp(min=1).to(batch.token_rewards.dtype)
    adv = gae_advantages(batch, cfg.gamma, (1.0 - 1.0 / (cfg.vapo_alpha * lengths)).clamp(min=0.0))
    returns = (gae_advantages(batch, cfg.gamma, 1.0) + batch.values) * mask
    return (masked_whiten(adv, mask) if cfg.whiten_advantages else adv), returns


def _grpo(batch: Any, cfg: Any, by_std: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r, g = _scores(batch), batch.group_ids
    adv = r - group_mean(r, g)
    return _outcome(adv / (group_std(r, g) + cfg.grpo_epsilon) if by_std else adv, batch)


@ADVANTAGES.register("grpo")
def grpo(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(r - group mean) / (group std + eps); with norm_adv_by_std=False it is Dr. GRPO's r - mean."""
    return _grpo(batch, cfg, cfg.norm_adv_by_std)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO: r - group mean, never divided by the std (ignores norm_adv_by_std)."""
    return _grpo(batch, cfg, False)


@ADVANTAGES.register("grpo_batch_std")
def grpo_batch_std(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """LitePPO (Liu et al. 2025, arXiv 2508.08221): r - group mean, over the std of the whole batch's rewards."""
    r, g = _scores(batch), batch.group_ids
    _, var = batch_mean_var(r, torch.ones_like(r))  # unbiased, as torch.std
    return _outcome((r - group_mean(r, g)) / (var.sqrt() + cfg.grpo_epsilon), batch)


@ADVANTAGES.register("grpo_passk")
def grpo_passk(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k: only each group's best sample learns, with advantage max - second max (/ std if norm).

    The leave-one-out max@k advantage of Tang et al. 2025 (arXiv 2503.19595), as veRL's `grpo_passk`; not the
    analytic pass@k advantage of Chen et al. 2025 ("Pass@k Training", arXiv 2508.10751)."""
    r, g = _scores(batch), batch.group_ids
    top = group_max(r, g)
    idx = torch.arange(len(r), device=r.device, dtype=r.dtype)
    # The best sample is the lowest index attaining the max, so a tie still picks exactly one.
    first_best = idx == group_min(torch.where(r == top, idx, torch.full_like(r, len(r))), g)
    second = group_max(torch.where(first_best, torch.full_like(r, -torch.inf), r), g)
    adv = torch.where(first_best, top - second, torch.zeros_like(r))
    adv = adv / (group_std(r, g) + cfg.grpo_epsilon) if cfg.norm_adv_by_std else adv
    return _outcome(adv, batch)


@ADVANTAGES.register("rloo")
def rloo(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out: r_i - mean of the other samples' rewards = n/(n-1) (r_i - mean)."""
    r, g = _scores(batch), batch.group_ids
    n = group_count(g).to(r.dtype)
    return _outcome((r - group_mean(r, g)) * n / (n - 1).clamp(min=1), batch)


@ADVANTAGES.register("reinforce_plus_plus")
def reinforce_plus_plus(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted token returns (gamma), whitened across the whole batch."""
    returns = discounted_returns(batch.token_rewards, batch.response_mask, cfg.gamma)
    adv = masked_whiten(returns, batch.response_mask) if cfg.whiten_advantages else returns
    return adv, returns


@ADVANTAGES.register("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: r - group mean broadcast over tokens, then whitened across the batch."""
    r, g = _scores(batch), batch.group_ids
    seq, _ = _outcome(r - group_mean(r, g), batch)
    return (masked_whiten(seq, batch.response_mask) if cfg.whiten_advantages else seq), seq


@ADVANTAGES.register("remax", requires=("baseline_rewards",))
def remax(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax: token return-to-go minus the reward of the greedy rollout for the same prompt."""
    mask = batch.response_mask
    returns = discounted_returns(batch.token_rewards, mask, cfg.gamma)
    return (returns - batch.baseline_rewards[:, None].to(returns.dtype)) * mask, returns


@ADVANTAGES.register("opo")
def opo(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """On-policy optimal baseline: r - sum(len_j r_j) / sum(len_j) over the group."""
    r, g = _scores(batch), batch.group_ids
    length = batch.response_mask.sum(-1).to(r.dtype)
    return _outcome(r - group_sum(length * r, g) / group_sum(length, g).clamp(min=1), batch)


@ADVANTAGES.register("gpg")
def gpg(batch: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """GPG: alpha * (r - group mean), alpha = B / #samples in groups whose rewards are not all equal."""
    r, g = _scores(batch), batch.group_ids
    counts = batch_sum(torch.stack([r.new_tensor(float(len(r))), (~uniform_groups(r, g)).sum().to(r.dtype)]))
    return _outcome((r - group_mean(r, g)) * (counts[0] / counts[1].clamp(min=1)).to(r.dtype), batch)


def check_batch(name: str, batch: Any) -> None:
    """Raise a clear error when `batch` lacks a field the estimator `name` declares in `requires`."""
    needed = ("token_rewards", "response_mask", "group_ids", *ADVANTAGES.entry(name).meta.get("requires", ()))
    missing = [f for f in needed if getattr(batch, f, None) is None]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs batch field(s) {missing}, which are not set")


@torch.no_grad()
def compute_advantages(batch: Any, cfg: Any, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the estimator `name` (default `cfg.adv_estimator`) after checking the batch has what it needs."""
    name = name or cfg.adv_estimator
    check_batch(name, batch)
    return ADVANTAGES.get(name)(batch, cfg)
