"""torch.distributed helpers for torchrun launches; every helper is a no-op (or identity) in one process.

Conventions the multi-rank loop relies on:
- Prompts are sharded *before* rollout (`shard_prompts`), so the n samples of a prompt (a
  group) always live on one rank and group-relative advantages need no communication.
- FSDP runs collectives in every forward and backward, so all ranks must run the same number
  of them: `pad_to_common_length` repeats a rank's last micro-batch (flagged as padding, to be
  weighted 0) until every rank has as many as the busiest one.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from rllava.config import ConfigError

T = TypeVar("T")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def require_process_group(strategy: str) -> None:
    """A sharding strategy runs only under torchrun: say so in one line when there is no process group."""
    if not is_initialized():
        raise ConfigError(f"actor.strategy={strategy} needs torch.distributed: launch with torchrun, "
                          f"e.g. torchrun --nproc_per_node=8 -m rllava train CONFIG")


def init_distributed() -> torch.device:
    """Join the torchrun process group (nccl on GPU, gloo on CPU) and return this rank's device.

    No-op outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1 without MASTER_ADDR) or when a group exists.
    One torchrun process still gets a group: fsdp2 (e.g. with parameter offload) needs one.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = world > 1 or ("WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)
    if launched and not is_initialized():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE is set but {var} is not: launch with torchrun")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def destroy_distributed() -> None:
    """Leave the group once every rank is done (a rank tearing down mid-collective aborts its peers)."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for nccl, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: list[float], op: str) -> list[float]:
    """Element-wise reduction over ranks (`op`: "SUM" or "MAX"), in float64 so counts stay exact."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def all_reduce_sum(value: float | torch.Tensor) -> float:
    """Sum of a scalar over ranks (e.g. a loss normaliser: the global count of trained tokens)."""
    return _all_reduce([float(value)], "SUM")[0]


def all_reduce_max(value: float | torch.Tensor) -> float:
    """Maximum of a scalar over ranks (e.g. the global response width for `norm_len`)."""
    return _all_reduce([float(value)], "MAX")[0]


def all_reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Average each metric over the ranks that report it (ranks may report different keys)."""
    return reduce_metrics(metrics)


def reduce_metrics(metrics: dict[str, float], how: dict[str, str] | None = None) -> dict[str, float]:
    """Combine each metric over ranks: "mean" (default; over the ranks that report it), "sum" or "max".

    `how` maps keys to their reduction. A rank that does not report a key takes its reduction from the ranks
    that do: callers build `how` from their own keys (`{k: "sum" for k in sums}`), and a rank that trained no
    token leaves some out; as a mean there, the sum would be divided by the number of ranks reporting it.
    """
    if not is_initialized():
        return dict(metrics)
    how = how or {}
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, (sorted(metrics), {k: how[k] for k in metrics if k in how}))
    union = sorted({k for ks, _ in gathered for k in ks})
    how = {k: v for _, theirs in gathered for k, v in theirs.items()}  # the same on every rank: so are the collectives
    n = len(union)
    sums = _all_reduce([float(metrics.get(k, 0.0)) for k in union] + [float(k in metrics) for k in union], "SUM")
    out = {k: sums[i] if how.get(k) == "sum" else sums[i] / sums[n + i] for i, k in enumerate(union)}
    maxed = [k for k in union if how.get(k) == "max"]
    if maxed:
        out.update(zip(maxed, _all_reduce([float(metrics.get(k, float("-inf"))) for k in maxed], "MAX")))
    return out


def shard_prompts(prompts: list[T], rank: int, world: int) -> list[T]:
    """This rank's contiguous share of a global prompt batch (its group offset is `rank * len(share)`).

    Sharding prompts, not episodes, keeps each prompt's n samples together on one rank.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_prompts: rank {rank} is not in a world of size {world}")
    if len(prompts) % world:
        raise ConfigError(f"the prompt batch size ({len(prompts)}, data.batch_size) must be divisible by the "
                         f"number of ranks ({world}) so every rank rolls out the same number of groups")
    k = len(prompts) // world
    return list(prompts[rank * k:(rank + 1) * k])


def pad_to_common_length(items: list[T], filler: T | None = None, at_least_one: bool = False) -> list[tuple[T, bool]]:
    """`(item, is_real)` pairs, padded with copies of the last item (`is_real=False`) to the max count over ranks.

    Padding items must still be forwarded (and backpropagated, with a zero loss weight) so that every
    rank issues the same FSDP collectives. With a `filler`, a rank without items pads with it;
    `at_least_one` (with a filler) gives a pair even when no rank has items.
    """
    target = max(int(all_reduce_max(len(items))), 1 if at_least_one and filler is not None else 0)
    if target and not items and filler is None:
        raise ValueError("this rank has no micro-batches while another has some: every rank needs at least one")
    pad = items[-1] if items else filler
    return [(x, True) for x in items] + [(pad, False)] * (target - len(items))


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D tensor (sizes may differ), concatenated in rank order, on every rank (CPU)."""
    if not is_initialized():
        return t
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, t.detach().cpu())
    return torch.cat(out)


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj` as a list (in rank order) on rank `dst`, None elsewhere; `[obj]` in one process."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (e.g. the checkpoint folder rank 0 chose to resume from)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
