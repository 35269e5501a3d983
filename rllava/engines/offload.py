"""Optimizer offload: fp32 master weights, their gradients and the AdamW states live in CPU memory.

Full-parameter training with fp32 master weights costs 16 bytes a parameter (weights, gradients and
two AdamW moments, all fp32): 65 GB for a 4 B model. With this offload the device holds only the
parameters in the compute dtype, 2 bytes a parameter in bf16, which is what lets a 4 B VLM train on
one 24 GB GPU (docs/benchmarks.md). The price is host memory (16 bytes a parameter) and a CPU AdamW step.

- Each gradient leaves the device as soon as backward has finished it: a post-accumulate-grad hook
  adds it into the fp32 CPU gradient and frees the device copy, so no whole gradient is ever on the
  device, and micro-batches accumulate in fp32.
- The optimizer steps the fp32 masters; the result is rounded once into the device parameters, so
  small updates (lr 1e-6) accumulate in the masters instead of vanishing in bf16.
- Rollout and the training forward use the device parameters themselves: no copy of the model.

Host buffers are allocated once: a fresh multi-GB tensor per step would page-fault its way in again
every time. Transfers cross in the compute dtype (half the bytes of fp32) through one pinned buffer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class CPUMasterWeights:
    """fp32 CPU masters for `params`, which are moved to `device` in `dtype` (in place: same Parameter objects)."""

    def __init__(self, params: list[nn.Parameter], device: torch.device, dtype: torch.dtype):
        pin = device.type == "cuda" and torch.cuda.is_available()  # pinned memory: full-speed copies
        self.params = params
        self.masters: list[torch.Tensor] = []
        self.grad_buffers: list[torch.Tensor] = []  # each master's .grad while it has one (reused every step)
        for p in params:
            self.masters.append(p.detach().to("cpu", torch.float32, copy=True))
            self.grad_buffers.append(torch.zeros_like(self.masters[-1]))
            # One parameter at a time, so the device never holds the model in fp32.
            p.data = p.data.to(dtype).to(device)
            p.register_post_accumulate_grad_hook(self._hook(len(self.masters) - 1))
        largest = max((p.numel() for p in params), default=0)
        self.staging = torch.empty(largest, dtype=dtype, pin_memory=pin)  # every transfer goes through here

    def _hook(self, i: int):
        return lambda p: self.grad_to_master(i, p)

    @torch.no_grad()
    def grad_to_master(self, i: int, p: torch.Tensor) -> None:
        """Add parameter i's device gradient into its fp32 master gradient, then free the device copy."""
        staged = self.staging[: p.numel()].view_as(p)
        staged.copy_(p.grad)  # blocking: the staging buffer is reused by the next parameter
        master = self.masters[i]
        if master.grad is None:  # the first micro-batch since the optimizer's zero_grad
            master.grad = self.grad_buffers[i]
            master.grad.copy_(staged)
        else:
            master.grad.add_(staged)
        p.grad = None  # freed here, before backward reaches the next layer

    @torch.no_grad()
    def push_to_device(self) -> None:
        """Round the (just updated) masters into the device parameters."""
        for p, master in zip(self.params, self.masters):
            staged = self.staging[: p.numel()].view_as(p)
            staged.copy_(master)  # the cast happens on the CPU: half the bytes cross to the device
            p.copy_(staged)

    @torch.no_grad()
    def load_masters(self, tensors: list[torch.Tensor]) -> None:
        """Set the masters (from a checkpoint, at full precision) and the device parameters from them."""
        for master, t in zip(self.masters, tensors):
            master.copy_(t)
        self.push_to_device()

    @contextlib.contextmanager
    def masters_in_place(self) -> Iterator[None]:
        """While inside, the parameters hold their fp32 masters (on the CPU), so whatever reads the module's
        weights (an fp32 HF export) gets the trained values rather than their compute-dtype rounding."""
        on_device = [p.data for p in self.params]
        try:
            for p, master in zip(self.params, self.masters):
                p.data = master  # no copy: the master itself, read-only by convention while swapped in
            yield
        finally:
            for p, data in zip(self.params, on_device):
                p.data = data
