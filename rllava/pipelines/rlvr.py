"""RL with verifiable rewards: the training step as in the paper, one screen of code."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rllava.algorithms import (
    ADVANTAGES,
    POLICY_LOSSES,
    REWARD_SHAPERS,
    apply_kl_penalty,
    demonstration_tokens,
    entropy_shaped_advantages,
    entropy_threshold,
    make_kl_controller,
    rl_part,
    rl_token_mask,
    sft_coef_at,
    top_entropy_mask,
)
from rllava.algorithms.losses import centered_cov
from rllava.config import ConfigError
from rllava.data.types import Batch, Episode
from rllava.engines import distributed as du
from rllava.models.weights import hf_weights
from rllava.pipelines.hooks import DEMONSTRATION_HOOKS, group_list, hooks_for, run_hooks
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.sft import render_response
from rllava.roles.actor import advantage_rows


def response_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Lengths of the rollouts, and `reward/zero_std_frac`: the share of prompt groups (of 2 or more rollouts)
    whose rewards are all the same. A group-relative estimator (GRPO, RLOO, ...) learns nothing from them;
    near 1 the run has stopped learning: the policy collapsed to one answer, or the prompts are too easy or hard."""
    lengths = [len(e.response_ids) for e in episodes]
    n = max(1, len(lengths))
    out = {"response/length_mean": sum(lengths) / n, "response/length_max": float(max(lengths, default=0)),
           "response/clip_ratio": sum(not e.finished for e in episodes) / n, "response/tokens": float(sum(lengths))}
    rewards = [[e.reward for e in g] for g in group_list(episodes)]
    spreads = [max(r) - min(r) for r in rewards if len(r) > 1]
    if spreads:
        out["reward/zero_std_frac"] = sum(s <= 1e-6 for s in spreads) / len(spreads)
    return out


def rl_advantages(batch: Batch, algo) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages (and returns) from what RL trains: SFT-only demonstration tokens (whole rows, UFT hints)
    get 0; whole demonstration rows also stay out of the group and batch statistics, while a hinted
    rollout, even one that is all hint, counts in its group."""
    demo = demonstration_tokens(batch.is_expert, batch.hint_len, batch.response_mask)
    rows, own_mask = rl_part(batch.response_mask, demo, batch.is_expert, algo.demonstrations)
    if own_mask is batch.response_mask:  # RL trains every token
        return ADVANTAGES.get(algo.adv_estimator)(batch, algo)
    adv = torch.zeros_like(batch.response_mask, dtype=torch.float32)
    returns = None
    # Also with no RL row left: an estimator with batch-level statistics is a collective under torchrun.
    sub = batch if rows is None else batch.select(rows)
    width = sub.response_width  # select() trims response columns past the kept rows' longest
    sub = dataclasses.replace(sub, response_mask=own_mask[:, :width])
    sub_adv, sub_returns = ADVANTAGES.get(algo.adv_estimator)(sub, algo)
    target = slice(None) if rows is None else rows
    adv[target, :width] = sub_adv.to(adv.dtype)
    if sub_returns is not None and own_mask.shape[0]:
        returns = torch.zeros_like(adv)
        returns[target, :width] = sub_returns.to(adv.dtype)
    return adv, returns


def rl_tokens(batch: Batch, algo) -> torch.Tensor:
    """[B, T] mask of the tokens RL trains: every response token but SFT-only demonstration tokens."""
    return rl_token_mask(batch.response_mask, batch.is_expert, batch.hint_len, algo.demonstrations)


def kl_in_reward(batch: Batch, logp: torch.Tensor, coef: float, algo) -> float:
    """Subtract coef * KL(policy || reference) from `batch.token_rewards`; return the step's mean KL.

    Over the tokens RL trains, as KL in the loss: a hint's or an SFT-only demonstration's tokens were not sampled
    from the policy, so they hold no KL sample (UFT's objective takes the KL over the generated part only)."""
    batch.token_rewards, kl = apply_kl_penalty(batch.token_rewards, logp, batch.ref_logp, rl_tokens(batch, algo),
                                               coef, algo.kl_estimator)
    return kl


def forking_tokens(batch: Batch, entropy: torch.Tensor, algo, metrics: dict[str, float]) -> torch.Tensor:
    """[B, T] 0/1: the top `algorithm.top_entropy_frac` of RL tokens by entropy, over the whole step's batch
    (every rank's tokens), so the choice does not depend on mini- or micro-batching."""
    mask = rl_tokens(batch, algo)
    threshold = entropy_threshold(du.all_gather_cat(entropy[mask != 0]), algo.top_entropy_frac)
    keep = top_entropy_mask(entropy, mask, threshold)
    metrics["adv/kept_token_frac"] = float(keep.sum() / mask.sum().clamp(min=1))
    if math.isfinite(threshold):  # inf: no RL token this step (all masked or demonstrations)
        metrics["adv/entropy_threshold"] = threshold
    return keep


def covariance_tokens(batch: Batch, logp: torch.Tensor, choice: Callable, algo, seed: int) -> torch.Tensor:
    """[B, T] bool: the tokens a covariance-based loss (Clip-Cov, KL-Cov) acts on, chosen by `choice` among the
    RL tokens of the step's whole batch (every rank's) with the policy before the update, so that neither
    mini- nor micro-batching nor the number of ranks changes them."""
    mask = rl_tokens(batch, algo)
    on = mask != 0
    n = max(1.0, du.all_reduce_sum(float(on.sum())))
    means = (du.all_reduce_sum(float((batch.advantages * mask).sum())) / n, du.all_reduce_sum(float((logp * mask).sum())) / n)
    cov = centered_cov(batch.advantages, logp, mask, means)[on]
    start = int(du.all_gather_cat(torch.tensor([cov.numel()]))[:du.rank()].sum())  # this rank's share of the step's
    chosen = choice(du.all_gather_cat(cov), algo, torch.Generator().manual_seed(seed))
    picked = torch.zeros_like(on)
    picked[on] = chosen[start:start + cov.numel()].to(on.device)
    return picked


@contextlib.contextmanager
def timed(metrics: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to `metrics["time/<key>"]` (seconds); a profiler trace labels it `rllava/<key>`."""
    t0 = time.perf_counter()
    try:
        with torch.profiler.record_function(f"rllava/{key}"):
            yield
    finally:
        metrics[f"time/{key}"] = metrics.get(f"time/{key}", 0.0) + time.perf_counter() - t0


@PIPELINES.register("rlvr", description="single-turn RL with verifiable rewards (GRPO, PPO, DAPO, ...)",
                    demonstrations=DEMONSTRATION_HOOKS)
class RLVRPipeline:
    LENGTH_LIMIT_SETTING = "rollout.max_new_tokens"  # the setting `length_limit` reads, named in errors

    def __init__(self, cfg):
        self.cfg = cfg
        self.hooks = hooks_for(cfg)
        self.kl_ctrl = make_kl_controller(cfg.algorithm)
        algo, limit = cfg.algorithm, self.length_limit()
        if "overlong_penalty" in algo.reward_shaping and not 0 < algo.overlong_buffer_len <= limit:
            raise ConfigError(f"algorithm.overlong_buffer_len={algo.overlong_buffer_len!r}: must be in "
                              f"(0, {self.LENGTH_LIMIT_SETTING}={limit}]")

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_ctrl.value}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctrl.value = state["kl_coef"]

    def demonstration_check(self) -> Callable[[dict, str], Any] | None:
        """fn(row fields, where) that raises on a row whose demonstration cannot be read; None without demonstrations."""
        if not self.cfg.algorithm.demonstrations:
            return None
        return lambda meta, where: render_response(self.cfg.data.response_template, meta, where)

    def length_limit(self) -> int:
        """Where a rollout is cut: what `overlong_penalty` measures lengths against."""
        return self.cfg.rollout.max_new_tokens

    def rollout_lengths(self, episodes: list[Episode]) -> torch.Tensor:
        """Each rollout's length as `length_limit` counts it: the tokens generated after the prompt (a UFT hint
        is prompt), whatever the loss masks (a cut rollout under `mask_truncated` is still long)."""
        return torch.tensor([len(e.response_ids) - e.hint_len for e in episodes])

    def shape_scores(self, scores: torch.Tensor, episodes: list[Episode]) -> torch.Tensor:
        """`algorithm.reward_shaping` applied in order to the episodes' scores."""
        lengths, limit = self.rollout_lengths(episodes), self.length_limit()
        for name in self.cfg.algorithm.reward_shaping:
            scores = REWARD_SHAPERS.get(name)(scores, lengths, self.cfg.algorithm, limit)
        return scores

    def _run_hooks(self, name: str, trainer, episodes, metrics):
        return run_hooks(self.hooks, name, trainer, episodes, metrics)

    def collect(self, trainer, prompts) -> tuple[list[Episode], dict[str, float]]:
        """Rollout and scoring, with the hooks in between (a multi-turn pipeline overrides this)."""
        ctx = trainer.ctx
        metrics: dict[str, float] = {}
        prompts = self._run_hooks("before_rollout", trainer, prompts, metrics)
        episodes = ctx.rollout.generate(prompts, ctx.rollout.train_sampling())
        episodes = self._run_hooks("after_rollout", trainer, episodes, metrics)
        metrics.update(ctx.reward.score(episodes))
        episodes = self._run_hooks("after_scoring", trainer, episodes, metrics)
        return episodes, metrics

    def train_step(self, trainer, prompts) -> dict[str, float]:
        ctx, algo = trainer.ctx, self.cfg.algorithm
        timing: dict[str, float] = {}
        with timed(timing, "rollout"):  # generation, hooks and reward scoring
            episodes, metrics = self.collect(trainer, prompts)
        metrics.update(timing)
        metrics.update(response_metrics([e for e in episodes if not e.is_expert]))
        batch = Batch.from_episodes(episodes, ctx.pad_id)
        if algo.reward_shaping:
            batch.set_scores(self.shape_scores(batch.rewards, episodes))
        needs_old, select_tokens = ctx.actor.needs_old_logprobs(len(batch)), algo.top_entropy_frac < 1
        needs_entropy = select_tokens or algo.entropy_adv_coef > 0
        token_choice = POLICY_LOSSES.entry(algo.policy_loss).meta.get("token_choice")  # Clip-Cov, KL-Cov
        # Rows an update skips (actor.skip_zero_advantage) need no old log-probs: where the advantages depend on
        # nothing this pass gives (entropy, the KL penalty, values), they come first and the pass runs the rest.
        advantages_first = (ctx.actor.skips_zero_advantage() and not needs_entropy and self.kl_ctrl.value == 0
                            and ctx.critic is None)
        if advantages_first:
            batch.advantages, batch.returns = rl_advantages(batch, algo)
        before = entropy = None  # the policy's log-probs (and entropy) before the update, when a step needs them
        if needs_old or needs_entropy or token_choice:  # one pass serves them all
            with timed(metrics, "old_logprobs"):
                if needs_entropy:
                    before, entropy = ctx.actor.logprobs(batch, with_entropy=True)
                else:
                    before = ctx.actor.logprobs(batch, rows=advantage_rows(batch) if advantages_first else None)
            batch.old_logp = before if needs_old else None
        if self.kl_ctrl.value > 0 and ctx.reference is not None:
            with timed(metrics, "reference"):
                batch.ref_logp = ctx.reference.logprobs(batch)
            if algo.kl_in == "reward":
                old = before if before is not None else ctx.actor.logprobs(batch)
                kl = kl_in_reward(batch, old, self.kl_ctrl.value, algo)
                # kl is the whole step's (every rank's sequences): the controller, and so the coefficient, is the
                # same on all ranks, and kl/mean (averaged over ranks by the trainer) is that same value.
                self.kl_ctrl.update(kl, int(du.all_reduce_sum(len(batch))))
                metrics.update({"kl/mean": kl, "kl/coef": self.kl_ctrl.value})
        if ctx.critic is not None:
            with timed(metrics, "values"):
                batch.values = ctx.critic.values(batch)
        if not advantages_first:
            batch.advantages, batch.returns = rl_advantages(batch, algo)
        if select_tokens:  # only forking tokens carry the policy gradient; KL and entropy terms keep every token
            batch.advantages = batch.advantages * forking_tokens(batch, entropy, algo, metrics)
        if algo.entropy_adv_coef:  # exploration bonus on high-entropy tokens, clipped by |A| / kappa
            shaped = entropy_shaped_advantages(batch.advantages, entropy, algo.entropy_adv_coef, algo.entropy_adv_kappa)
            metrics["adv/entropy_bonus_mean"] = float(((shaped - batch.advantages) * batch.response_mask).sum()
                                                      / batch.response_mask.sum().clamp(min=1))
            batch.advantages = shaped
        if token_choice is not None:
            batch.token_pick = covariance_tokens(batch, before, token_choice, algo, self.cfg.trainer.seed + trainer.step)
        metrics["adv/abs_mean"] = float((batch.advantages.abs() * batch.response_mask).sum() / batch.response_mask.sum().clamp(min=1))
        if ctx.critic is None or trainer.step >= self.cfg.critic.pretrain_steps:  # else the critic learns first
            with timed(metrics, "update"):
                sft_coef = sft_coef_at(algo, trainer.step)
                if algo.demonstrations:
                    metrics["demo/sft_coef"] = sft_coef
                metrics.update(ctx.actor.update(batch, seed=self.cfg.trainer.seed + trainer.step, sft_coef=sft_coef,
                                                length_limit=self.length_limit()))
        if ctx.critic is not None and batch.returns is not None:  # None: no rollout left to learn values from
            with timed(metrics, "critic_update"):
                metrics.update(ctx.critic.update(batch, seed=self.cfg.trainer.seed + trainer.step))
        ref = self.cfg.reference
        if ctx.reference is not None and ref.sync_steps and (trainer.step + 1) % ref.sync_steps == 0:
            with timed(metrics, "reference_sync"):  # every rank walks the (gathered) weights in the same order
                ctx.reference.sync(hf_weights(ctx.model), ref.sync_alpha)
        return metrics
