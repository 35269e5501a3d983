"""The actor: the policy's log-probs and its update over mini-batches, epochs and micro-batches."""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import torch

from rllava.algorithms import (
    AGGREGATIONS,
    POLICY_LOSSES,
    demonstration_tokens,
    entropy_loss,
    kl_loss,
    rl_part,
    sft_loss,
    sft_part,
)
from rllava.config import ActorConfig, Config, ConfigError
from rllava.data.types import Batch, PromptShare
from rllava.engines import distributed as du
from rllava.models.introspect import unwrap
from rllava.models.logprobs import response_logprobs
from rllava.models.shared_prompt import can_share_prompt, sharing_supported

logger = logging.getLogger(__name__)
_WARNED_NO_CORRECTION: set[str] = set()


def check_loss_output(name: str, loss: torch.Tensor, metrics: dict[str, float], corrects: bool) -> None:
    """A policy loss returns a scalar; with `algorithm.tis_cap` (`corrects`) it should apply the rollout correction,
    which the built-in losses report as `tis_weight_mean` (a plugin's that ignores it is warned about once)."""
    if loss.dim() != 0:
        raise ConfigError(f"algorithm.policy_loss={name!r} returned a loss of shape {tuple(loss.shape)}, not a scalar: "
                          "reduce per-token losses with rllava.algorithms.aggregate(per_token, mask, cfg.loss_agg_mode, "
                          "extra.get('norm_len'))")
    if corrects and "tis_weight_mean" not in metrics and name not in _WARNED_NO_CORRECTION \
            and POLICY_LOSSES.entry(name).meta.get("rollout_correction", True):
        _WARNED_NO_CORRECTION.add(name)
        logger.warning("algorithm.tis_cap is set but algorithm.policy_loss=%r applied no rollout correction (it reports "
                       "no tis_weight_mean): weight its per-token loss by rllava.algorithms.rollout_correction.rollout_weights(old_logp, "
                       "extra['rollout_logp'], mask, cfg)", name)


def weight_size(mode: str, mask: torch.Tensor) -> float:
    """What rows with response `mask` contribute to the aggregation denominator: trained tokens or rows (the
    mode's `unit`)."""
    unit = AGGREGATIONS.entry(mode).meta.get("unit", "seq")
    return float(mask.sum()) if unit == "token" else float(mask.shape[0])


def take(t: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """Rows `rows` of `t` (all of it when rows is None)."""
    return t if t is None or rows is None else t[rows]


def sampling_temperature(cfg: Config) -> float:
    """Log-probs are taken under the distribution the rollout sampled from (logits / temperature)."""
    return cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0


def budget_shares_prompts(cfg: Config, model: torch.nn.Module, training: bool) -> bool:
    """Whether token budgets count a shared prompt once: actor.share_prompt, and the model can share in this mode."""
    return cfg.actor.share_prompt and sharing_supported(unwrap(model), training)


def forward_inputs(model: torch.nn.Module, batch: Batch, device: torch.device | str | None, share_prompts: bool,
                   sync_ranks: bool, pass_tokens: int = ActorConfig.response_pass_tokens,
                   ) -> tuple[dict[str, torch.Tensor], PromptShare | None]:
    """Model inputs for `batch`, and its prompt sharing when `share_prompts` and it applies.

    `sync_ranks`: the model is sharded, and the shared path runs it more than once, so every rank must
    take the same path: they share only if all of them can, and make as many response passes.
    `pass_tokens`: what one more response pass costs (`actor.response_pass_tokens`).
    """
    share = batch.prompt_share(device) if share_prompts else None
    usable = share is not None and can_share_prompt(unwrap(model), batch.prompt_width, batch.response_width)
    if share_prompts and sync_ranks:
        usable = du.all_reduce_max(0.0 if usable else 1.0) == 0.0
    share = share if usable else None
    if share is not None:
        share.pass_tokens = pass_tokens
        if sync_ranks and du.is_initialized():
            share.agree_passes = lambda n: int(du.all_reduce_max(n))
    return batch.model_inputs(device, images=share is None), share


@torch.no_grad()
def batched_logprobs(forward, batch: Batch, token_budget: int, with_entropy: bool = False, sync_ranks: bool = True,
                     share_prompts: bool = False, rows: torch.Tensor | None = None):
    """Run `forward(micro, with_entropy)` over token-budget micro-batches and reassemble [B, T] in row order.

    `sync_ranks`: the forward runs a sharded model, so every rank runs as many micro-batches as the busiest one.
    `share_prompts`: the forward runs each distinct prompt once, so the budget counts it once.
    `rows`: only these rows run; the others read 0.
    """
    out = torch.zeros(batch.responses.shape, dtype=torch.float32)
    ent = torch.zeros_like(out)
    if rows is None:
        groups = batch.token_budget_groups(token_budget, share_prompts)
    else:  # the chosen rows' micro-batches, as row indices of the whole batch
        chosen = rows.tolist()
        groups = ([[chosen[i] for i in g] for g in batch.select(chosen).token_budget_groups(token_budget, share_prompts)]
                  if chosen else [])
    # With `rows`, a rank that has none chosen pads with one row while another rank runs some.
    pairs = (du.pad_to_common_length(groups, filler=[0] if rows is not None else None) if sync_ranks
             else [(g, True) for g in groups])
    for group, real in pairs:
        logp, h = forward(batch.select(group), with_entropy)
        if not real:
            continue
        out[group, : logp.shape[1]] = logp.float().cpu()
        if h is not None:
            ent[group, : h.shape[1]] = h.float().cpu()
    return (out, ent) if with_entropy else out


def advantage_rows(b: Batch) -> torch.Tensor:
    """Indices of the rows with a non-zero advantage on some trained token."""
    return ((b.advantages * b.response_mask) != 0).any(-1).nonzero().squeeze(-1)


def positive_tokens(b: Batch, rl_mask: torch.Tensor, algo, rows: torch.Tensor | None) -> torch.Tensor:
    """[R, T] the RL tokens (`rl_mask`, of `rows` of b or all) of rollouts whose reward reaches
    `algorithm.positive_reward_min`: the positive examples of VAPO's LM loss."""
    rewards = b.rewards if rows is None else b.rewards[rows]
    good = (rewards >= algo.positive_reward_min).to(rl_mask.dtype)
    return rl_mask * good[:, None]


class Actor:
    def __init__(self, engine, cfg: Config):
        self.engine = engine
        self.cfg = cfg

    @property
    def model(self):
        return self.engine.model

    def forward(self, batch: Batch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs, share = forward_inputs(self.model, batch, self.engine.device, self.cfg.actor.share_prompt,
                                       sync_ranks=True, pass_tokens=self.cfg.actor.response_pass_tokens)
        return response_logprobs(self.model, inputs, batch.responses.to(self.engine.device),
                                 temperature=sampling_temperature(self.cfg), chunk_size=self.cfg.actor.logprob_chunk_size,
                                 with_entropy=with_entropy, share=share)

    def logprobs(self, batch: Batch, with_entropy: bool = False, rows: torch.Tensor | None = None):
        """Log-probs (and entropy) of the response tokens under the current weights, [B, T] on CPU; with `rows`,
        only those rows run and the others read 0."""
        with self.engine.compute(train=False):
            return batched_logprobs(self.forward, batch, self.cfg.actor.micro_token_budget, with_entropy,
                                    share_prompts=budget_shares_prompts(self.cfg, self.model, training=False), rows=rows)

    def skips_zero_advantage(self, loss_name: str | None = None) -> bool:
        """Whether an update leaves out the rows whose advantage is 0 everywhere (actor.skip_zero_advantage with a
        row-local loss): they then need no old log-probs either."""
        name = loss_name or self.cfg.algorithm.policy_loss
        return self.cfg.actor.skip_zero_advantage and bool(POLICY_LOSSES.entry(name).meta.get("row_local"))

    def mini_batch_count(self, n_local: int) -> int:
        """Optimizer steps per epoch, the same on every rank: ceil(all ranks' rows / actor.mini_batch_size), or one
        step for 0 (= all rows). Counted from the global rows: ranks may hold different numbers (group filters), and
        counting local rows would give them different numbers of steps. (`n_local`: this rank's rows.)"""
        size, world = self.cfg.actor.mini_batch_size, du.world_size()
        if size % world:
            raise ConfigError(f"actor.mini_batch_size={size} must be divisible by the number of ranks ({world})")
        rows = int(du.all_reduce_sum(n_local))
        return math.ceil(rows / size) if size else min(rows, 1)

    def needs_old_logprobs(self, batch_size: int) -> bool:
        """With one epoch and one mini-batch the update is exactly on-policy: old = current, detached."""
        return self.cfg.actor.ppo_epochs > 1 or self.mini_batch_count(batch_size) > 1

    def update(self, batch: Batch, loss_name: str | None = None, seed: int = 0,
               sft_coef: float | None = None, length_limit: int = 0) -> dict[str, float]:
        """Policy-gradient update: epochs x mini-batches (one optimizer step each) x micro-batches.

        Every loss term is divided by its *global* denominator (summed over ranks), so the ranks'
        gradients sum to the single-process gradient of the whole batch; metrics are the mini-batch
        aggregates (weighted like the loss), averaged over optimizer steps. `sft_coef` is this step's
        weight of the SFT term on demonstrations (default `algorithm.sft_coef`; a schedule sets it).
        `length_limit`: where rollouts are cut, the constant `seq-mean-token-sum-norm` divides by (Dr. GRPO's
        MAX_TOKENS), unless this batch's responses are longer (a UFT hint before the generated tokens).
        """
        algo = self.cfg.algorithm
        loss_name = loss_name or algo.policy_loss
        loss_fn = POLICY_LOSSES.get(loss_name)
        sft_coef = algo.sft_coef if sft_coef is None else sft_coef
        # Rows with no advantage anywhere add nothing to a row-local loss (run.check_zero_advantage_skip).
        skip_zero = batch.advantages is not None and self.skips_zero_advantage(loss_name)
        n_minis = self.mini_batch_count(len(batch))
        if n_minis and not len(batch):
            raise ValueError("actor.update: this rank has no rows while another has some: every rank needs at least one")
        # The same constant on every rank and at every step: a token's weight must not depend on how long
        # the other responses of its step happen to be.
        norm_len = int(du.all_reduce_max(max(batch.response_width, length_limit)))
        gen = torch.Generator().manual_seed(seed)
        history: dict[str, list[float]] = defaultdict(list)
        for _ in range(self.cfg.actor.ppo_epochs):
            order = torch.randperm(len(batch), generator=gen) if n_minis > 1 else torch.arange(len(batch))
            # Each optimizer step takes its share of every rank's rows. A rank with fewer rows than the others may
            # have none for a step: it then runs one row at zero weight, so every rank makes the same collectives.
            for rows in torch.tensor_split(order, n_minis) if n_minis else []:
                real = len(rows) > 0
                mini = batch.select(rows if real else order[:1])
                for k, v in self._update_mini(mini, real, loss_fn, norm_len, sft_coef, skip_zero, loss_name).items():
                    history[k].append(v)
        return {k: sum(v) / len(v) for k, v in history.items()}

    def _update_mini(self, mini: Batch, real: bool, loss_fn, norm_len: int, sft_coef: float,
                     skip_zero: bool = False, loss_name: str = "") -> dict[str, float]:
        """One optimizer step on a mini-batch (split into micro-batches by token budget).

        The RL loss covers the tokens RL trains (all, or the rollouts' own tokens when demonstrations are
        SFT-only); the SFT term covers demonstration tokens. Each is averaged over its own part of the
        mini-batch. `skip_zero`: rows whose advantage is 0 on every token are left out of the forward and
        backward; the loss keeps the whole mini-batch's denominators, so the gradient is the same.
        """
        algo, mode = self.cfg.algorithm, self.cfg.algorithm.loss_agg_mode
        use_kl_loss = algo.kl_coef > 0 and algo.kl_in == "loss" and mini.ref_logp is not None
        rl_coef = 1.0 - sft_coef if algo.sft_mix == "convex" else 1.0

        def parts(b: Batch) -> tuple:
            """(RL rows, their mask, SFT rows, their demonstration-token mask) of b."""
            demo = demonstration_tokens(b.is_expert, b.hint_len, b.response_mask)
            return (*rl_part(b.response_mask, demo, b.is_expert, algo.demonstrations),
                    *sft_part(b.response_mask, demo, sft_coef))

        rl_rows, rl_mask, sft, sft_mask = parts(mini)
        rl_den = max(1.0, du.all_reduce_sum(weight_size(mode, rl_mask) if real else 0.0))
        rl_tokens = max(1.0, du.all_reduce_sum(float(rl_mask.sum()) if real else 0.0))
        sft_den = max(1.0, du.all_reduce_sum(weight_size(mode, sft_mask) if real and sft is not None else 0.0))
        demo_tokens = max(1.0, du.all_reduce_sum(float(sft_mask.sum()) if real and sft is not None else 0.0))
        pos_coef = algo.positive_nll_coef
        pos_tokens = max(1.0, du.all_reduce_sum(float(positive_tokens(mini, rl_mask, algo, rl_rows).sum())
                                                if real and pos_coef else 0.0))
        sums: dict[str, float] = defaultdict(float)
        run, metric_den, metric_tokens = mini, rl_den, rl_tokens
        if skip_zero:
            keep = advantage_rows(mini)
            run = mini.select(keep) if len(keep) else None
            rows = max(1.0, du.all_reduce_sum(float(len(mini)) if real else 0.0))
            sums["actor/skipped_rows"] = (len(mini) - len(keep)) / rows if real else 0.0  # a share of all ranks' rows
            # Metrics (entropy, ratios) describe the rows that ran.
            run_mask = parts(run)[1] if run is not None else None
            metric_den = max(1.0, du.all_reduce_sum(weight_size(mode, run_mask) if real and run is not None else 0.0))
            metric_tokens = max(1.0, du.all_reduce_sum(float(run_mask.sum()) if real and run is not None else 0.0))
        with self.engine.compute(train=True):
            share_prompts = budget_shares_prompts(self.cfg, self.model, training=True)
            micros = run.split_by_tokens(self.cfg.actor.micro_token_budget, share_prompts) if run is not None else []
            # A rank (or every rank) with nothing to run still forwards one row at zero weight: the FSDP collectives
            # match, and the parameters the forward reaches get their zero gradient, as AdamW would have seen it
            # (the same parameters unless rows reach different modules, as text-only rows beside image rows do).
            for micro, real_micro in du.pad_to_common_length(micros, filler=mini.select([0]) if skip_zero else None,
                                                             at_least_one=skip_zero):
                m = micro.to(self.engine.device)
                logp, entropy = self.forward(m, with_entropy=True)
                live = real and real_micro  # padding micro-batches still run forward and backward but weigh 0
                rl, mask, sft, demo_mask = parts(m)
                total, metrics, weight = logp.sum() * 0.0, {}, 0.0  # zero, but part of the graph (FSDP backward)
                if mask.shape[0]:
                    rl_logp, ent_rows = take(logp, rl), take(entropy, rl)
                    old = take(m.old_logp, rl) if m.old_logp is not None else rl_logp.detach()
                    adv = take(m.advantages, rl) if m.advantages is not None else torch.zeros_like(rl_logp)
                    loss, metrics = loss_fn(rl_logp, old, adv, mask, algo, rollout_logp=take(m.rollout_logp, rl),
                                            entropy=ent_rows, norm_len=norm_len, is_expert=take(m.is_expert, rl),
                                            token_pick=take(m.token_pick, rl))
                    check_loss_output(loss_name or algo.policy_loss, loss, metrics, algo.tis_cap is not None
                                      and m.rollout_logp is not None)
                    ent = entropy_loss(ent_rows, mask, mode, norm_len=norm_len)
                    if algo.entropy_coef:
                        loss = loss - algo.entropy_coef * ent
                    if use_kl_loss:
                        kl = kl_loss(rl_logp, take(m.ref_logp, rl), mask, algo.kl_estimator, mode, norm_len=norm_len)
                        loss = loss + algo.kl_coef * kl
                        metrics["kl_loss"] = float(kl.detach())
                    metrics["entropy"] = float(ent.detach())
                    metrics["loss"] = float(loss.detach())
                    weight = weight_size(mode, mask) / rl_den if live else 0.0
                    total = rl_coef * weight * loss
                if pos_coef:  # VAPO's positive-example LM loss: NLL on the trained tokens of well-rewarded rollouts
                    pos = positive_tokens(m, mask, algo, rl)
                    pos_nll = -(take(logp, rl) * pos).sum() / pos_tokens
                    total = total + (pos_coef * pos_nll if live else 0.0 * pos_nll)
                    sums["actor/positive_nll"] += float(pos_nll.detach()) if live else 0.0
                if sft is not None and len(sft):  # SFT-RL hybrids: the SFT term on demonstration tokens
                    term, nll = sft_loss(logp[sft], demo_mask, algo, norm_len, entropy=entropy[sft])
                    sft_weight = weight_size(mode, demo_mask) / sft_den if live else 0.0
                    total = total + sft_coef * sft_weight * term
                    # the metric is the NLL per demonstration token, however the rows are split or aggregated
                    sums["actor/demo_nll"] += nll * float(demo_mask.sum()) / demo_tokens if live else 0.0
                self.engine.backward(total)
                # loss, entropy and kl_loss are aggregated like the loss; the loss function's own metrics are means
                # over trained tokens, so they weigh by tokens: either way the value does not depend on the split
                token_weight = float(mask.sum()) / metric_tokens if live else 0.0
                agg_weight = weight_size(mode, mask) / metric_den if live else 0.0
                for k, v in metrics.items():
                    w = weight if k == "loss" else agg_weight if k in ("entropy", "kl_loss") else token_weight
                    if w:  # (0 * NaN would poison the sum)
                        sums[f"actor/{k}"] += w * float(v)
        out = du.reduce_metrics(sums, {k: "sum" for k in sums})
        out.update({f"actor/{k}": v for k, v in self.engine.step().items()})
        return out
