"""The actor: the policy's log-probs and its update over mini-batches, epochs and micro-batches."""
from __future__ import annotations

from collections import defaultdict

import torch

from rllava.algorithms import AGGREGATIONS, POLICY_LOSSES, entropy_loss, kl_loss
from rllava.config import Config
from rllava.data.types import Batch
from rllava.models.logprobs import response_logprobs


def micro_weight(mode: str, micro: Batch, mini: Batch) -> float:
    """Share of the mini-batch's aggregation denominator held by `micro`, so that summing
    micro-batch losses times this weight equals the mini-batch loss exactly."""
    unit = AGGREGATIONS.entry(mode).meta.get("unit", "seq")
    if unit == "token":
        return float(micro.response_mask.sum() / mini.response_mask.sum().clamp(min=1))
    return len(micro) / len(mini)


def sampling_temperature(cfg: Config) -> float:
    """Log-probs are taken under the distribution the rollout sampled from (logits / temperature)."""
    return cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0


@torch.no_grad()
def batched_logprobs(forward, batch: Batch, token_budget: int, with_entropy: bool = False):
    """Run `forward(micro, with_entropy)` over token-budget micro-batches and reassemble [B, T] in row order."""
    out = torch.zeros(batch.responses.shape, dtype=torch.float32)
    ent = torch.zeros_like(out)
    for rows in batch.token_budget_groups(token_budget):
        logp, h = forward(batch.select(rows), with_entropy)
        out[rows, : logp.shape[1]] = logp.float().cpu()
        if h is not None:
            ent[rows, : h.shape[1]] = h.float().cpu()
    return (out, ent) if with_entropy else out


class Actor:
    def __init__(self, engine, cfg: Config):
        self.engine = engine
        self.cfg = cfg

    @property
    def model(self):
        return self.engine.model

    def forward(self, batch: Batch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return response_logprobs(self.model, batch.model_inputs(self.engine.device), batch.responses.to(self.engine.device),
                                 temperature=sampling_temperature(self.cfg), chunk_size=self.cfg.actor.logprob_chunk_size,
                                 with_entropy=with_entropy)

    def logprobs(self, batch: Batch, with_entropy: bool = False):
        """Log-probs (and entropy) of the response tokens under the current weights, [B, T] on CPU."""
        with self.engine.compute(train=False):
            return batched_logprobs(self.forward, batch, self.cfg.actor.micro_token_budget, with_entropy)

    def needs_old_logprobs(self, batch_size: int) -> bool:
        """With one epoch and one mini-batch the update is exactly on-policy: old = current, detached."""
        mini = self.cfg.actor.mini_batch_size or batch_size
        return self.cfg.actor.ppo_epochs > 1 or mini < batch_size

    def update(self, batch: Batch, loss_name: str | None = None, seed: int = 0) -> dict[str, float]:
        """Policy-gradient update: epochs x mini-batches (one optimizer step each) x micro-batches."""
        algo, actor = self.cfg.algorithm, self.cfg.actor
        loss_fn = POLICY_LOSSES.get(loss_name or algo.policy_loss)
        use_kl_loss = algo.kl_coef > 0 and algo.kl_in == "loss" and batch.ref_logp is not None
        mini_size = actor.mini_batch_size or len(batch)
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for _ in range(actor.ppo_epochs):
            order = torch.randperm(len(batch), generator=gen) if mini_size < len(batch) else torch.arange(len(batch))
            for start in range(0, len(batch), mini_size):
                mini = batch.select(order[start:start + mini_size])
                with self.engine.compute(train=True):
                    for micro in mini.split_by_tokens(actor.micro_token_budget):
                        m = micro.to(self.engine.device)
                        logp, entropy = self.forward(m, with_entropy=True)
                        old = m.old_logp if m.old_logp is not None else logp.detach()
                        adv = m.advantages if m.advantages is not None else torch.zeros_like(logp)
                        loss, metrics = loss_fn(logp, old, adv, m.response_mask, algo, rollout_logp=m.rollout_logp,
                                                entropy=entropy, norm_len=batch.response_width)
                        ent = entropy_loss(entropy, m.response_mask, algo.loss_agg_mode, norm_len=batch.response_width)
                        if algo.entropy_coef:
                            loss = loss - algo.entropy_coef * ent
                        if use_kl_loss:
                            kl = kl_loss(logp, m.ref_logp, m.response_mask, algo.kl_estimator, algo.loss_agg_mode,
                                         norm_len=batch.response_width)
                            loss = loss + algo.kl_coef * kl
                            metrics["kl_loss"] = float(kl.detach())
                        metrics["entropy"] = float(ent.detach())
                        metrics["loss"] = float(loss.detach())
                        (loss * micro_weight(algo.loss_agg_mode, micro, mini)).backward()
                        for k, v in metrics.items():
                            sums[f"actor/{k}"] += float(v)
                            counts[f"actor/{k}"] += 1
                for k, v in self.engine.step().items():
                    sums[f"actor/{k}"] += v
                    counts[f"actor/{k}"] += 1
        return {k: sums[k] / counts[k] for k in sums}
