"""Loss aggregation: how a per-token loss [B, T] becomes one scalar.

Conventions: `mask` is 1.0 on trained tokens and 0.0 on padding / environment tokens; masked
positions never contribute. Every mode averages over *all* rows of the batch, including rows with
no trained token (they count as a zero loss), so that a mini-batch split into micro-batches
sums back exactly with the weights in each entry's `unit` meta:
`unit="token"` -> weight by the micro-batch's share of trained tokens, `unit="seq"` -> share of rows.

`seq-mean-token-sum-norm` (Dr. GRPO) divides each sequence's token sum by a constant, the maximum
response length. By default that is `mask.shape[1]`; the actor passes `norm_len`, the rollouts' length
limit (rollout.max_new_tokens; multi-turn: env.max_total_tokens), so the constant stays the same across
micro-batches and steps. Unlike veRL, which divides
the *batch* sum by that constant, we also average over sequences: the gradient direction is the
same and the scale no longer grows with the batch size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from rllava.registry import Registry


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x * mask, with masked positions exactly 0 even when x holds inf/NaN there (inf * 0 is NaN)."""
    return torch.where(mask != 0, x * mask, torch.zeros_like(x))


AGGREGATIONS = Registry("aggregation", "how a per-token loss [B, T] is reduced to a scalar (algorithm.loss_agg_mode)")


@AGGREGATIONS.register("token-mean", unit="token")
def token_mean(x: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int] = None) -> torch.Tensor:
    """Mean over all trained tokens of the batch (long sequences weigh more; DAPO)."""
    return _masked(x, mask).sum() / mask.sum().clamp(min=1)


@AGGREGATIONS.register("seq-mean-token-sum", unit="seq")
def seq_mean_token_sum(x: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int] = None) -> torch.Tensor:
    """Sum over each sequence's tokens, then mean over sequences."""
    return _masked(x, mask).sum(-1).mean()


@AGGREGATIONS.register("seq-mean-token-mean", unit="seq")
def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int] = None) -> torch.Tensor:
    """Mean over each sequence's tokens, then mean over sequences (original GRPO)."""
    return (_masked(x, mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@AGGREGATIONS.register("seq-mean-token-sum-norm", unit="seq")
def seq_mean_token_sum_norm(x: torch.Tensor, mask: torch.Tensor, norm_len: Optional[int] = None) -> torch.Tensor:
    """Sum over each sequence's tokens / max response length, then mean over sequences (Dr. GRPO)."""
    return (_masked(x, mask).sum(-1) / float(norm_len or mask.shape[-1])).mean()


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: Optional[int] = None) -> torch.Tensor:
    """Reduce `per_token` [B, T] over `mask` [B, T] with the registered mode `mode`."""
    if per_token.shape != mask.shape:
        raise ValueError(f"aggregate: per-token loss has shape {tuple(per_token.shape)} but mask has {tuple(mask.shape)}")
    return AGGREGATIONS.get(mode)(per_token, mask.to(per_token.dtype), norm_len=norm_len)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is non-zero (0 when there are none)."""
    return _masked(x, mask).sum() / mask.sum().clamp(min=1)


def row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, 1]: each row's mean of `x` over its masked positions (0 for a row with none)."""
    return _masked(x, mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over every rank's share of the step's batch under torchrun; `x` itself in one process.

    Batch-level statistics (whitening, GPG's alpha) are the whole step's, as in one process: prompts
    are sharded across ranks, so a rank holds only part of the batch. A collective: every rank calls it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    nccl = dist.get_backend() == "nccl"  # its collectives take GPU tensors; gloo's CPU ones
    total = x.detach().to(device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu",
                          dtype=torch.float64)
    dist.all_reduce(total)
    return total.to(device=x.device, dtype=x.dtype)


def batch_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of `x` over the masked positions of the whole step's batch (every rank's)."""
    n = batch_sum(mask.sum())
    mean = batch_sum(_masked(x, mask).sum()) / n.clamp(min=1)
    return mean, batch_sum(_masked((x - mean) ** 2, mask).sum()) / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions of the whole step's batch (every rank's; unbiased
    variance); masked positions become 0."""
    mean, var = batch_mean_var(x, mask)
    return _masked((x - mean) * torch.rsqrt(var + eps), mask)
