"""Optimizers by name (`actor.optimizer`, `critic.optimizer`): fn(params, lr, betas, weight_decay) -> Optimizer.

`adamw` keeps two fp32 moments, 8 bytes a parameter. `adamw_8bit` (bitsandbytes) keeps them
block-wise quantised to 8 bits, 2 bytes a parameter plus one fp32 scale per block: a 7 B model's
states shrink from 56 GB to 14 GB. Small tensors (under 4096 elements) keep fp32 moments.
"""
from __future__ import annotations

import logging

import torch

from rllava.config import MissingPackageError
from rllava.registry import Registry

OPTIMIZERS = Registry("optimizer", "optimizers (actor.optimizer, critic.optimizer): fn(params, lr, betas, weight_decay)")


def fused_adamw_ok(params: list[torch.Tensor]) -> bool:
    """The fused AdamW kernel (measured ~4x faster than the for-loop on CPU) needs float params on cpu/cuda."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


@OPTIMIZERS.register("adamw", description="torch AdamW, fp32 moments (8 bytes a parameter); fused where it applies")
def adamw(params: list[torch.Tensor], lr: float, betas: tuple, weight_decay: float,
          fused: bool = True) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             fused=fused and fused_adamw_ok(params))


@OPTIMIZERS.register("adamw_8bit", description="bitsandbytes AdamW8bit: block-wise 8-bit moments (2 bytes a parameter)",
                     sharded=False, package="bitsandbytes", extra="bnb")  # sharded=False: fsdp2 gives it local shards
def adamw_8bit(params: list[torch.Tensor], lr: float, betas: tuple, weight_decay: float,
               fused: bool = True) -> torch.optim.Optimizer:
    """Fast on CUDA. On the CPU (and so under actor.optimizer_offload) bitsandbytes runs it in plain torch:
    about 25x slower than fused AdamW (docs/benchmarks.md), for a quarter of the host memory."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns about 4-bit matmul kernels, which no optimizer uses
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise MissingPackageError(f"optimizer adamw_8bit needs bitsandbytes: pip install 'rllava[bnb]' ({e})") from None
    finally:
        quiet.setLevel(level)
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
