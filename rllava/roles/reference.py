"""The reference policy: a frozen copy of the initial weights, or the LoRA base with adapters off.

Under torchrun the frozen copy is not sharded: every rank holds it whole, in the compute dtype.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from rllava.config import Config
from rllava.data.types import Batch
from rllava.models.logprobs import response_logprobs
from rllava.roles.actor import batched_logprobs, budget_shares_prompts, forward_inputs, sampling_temperature


class Reference:
    def __init__(self, model: nn.Module, cfg: Config, device: torch.device, compute, use_disabled_adapter: bool = False):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.compute = compute  # the actor engine's precision context
        self.use_disabled_adapter = use_disabled_adapter
        if not use_disabled_adapter:
            model.requires_grad_(False)
            model.eval()

    def _forward(self, batch: Batch, with_entropy: bool):
        # A separate reference model is a full copy on each rank; the LoRA base is the (sharded) actor.
        inputs, share = forward_inputs(self.model, batch, self.device, self.cfg.actor.share_prompt,
                                       sync_ranks=self.use_disabled_adapter, pass_tokens=self.cfg.actor.response_pass_tokens)
        return response_logprobs(self.model, inputs, batch.responses.to(self.device),
                                 temperature=sampling_temperature(self.cfg), chunk_size=self.cfg.actor.logprob_chunk_size,
                                 with_entropy=with_entropy, share=share)

    def logprobs(self, batch: Batch) -> torch.Tensor:
        adapters_off = self.model.disable_adapter() if self.use_disabled_adapter else contextlib.nullcontext()
        with adapters_off, self.compute(train=False):
            # A separate reference model is a full local copy on each rank (no collectives); the LoRA
            # base is the actor's own module, which may be sharded.
            return batched_logprobs(self._forward, batch, self.cfg.actor.micro_token_budget,
                                    sync_ranks=self.use_disabled_adapter,
                                    share_prompts=budget_shares_prompts(self.cfg, self.model, training=False))

    def sync(self, weights: Iterable[tuple[str, torch.Tensor]], alpha: float = 1.0) -> None:
        """ref <- alpha * policy + (1 - alpha) * ref, from the policy's (name, full tensor) stream (`hf_weights`)."""
        if self.use_disabled_adapter:
            raise RuntimeError("the LoRA reference is the actor's frozen base: it cannot be moved")
        params = dict(self.model.named_parameters())
        seen = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise ValueError(f"reference sync: the policy has {name!r}, the reference does not")
                p = params[name]
                seen.add(name)
                if alpha == 1.0:
                    p.copy_(tensor)
                else:  # in fp32: a bf16 lerp would round small moves away
                    p.copy_(p.float().lerp_(tensor.to(p.device, torch.float32), alpha))
        if seen != set(params):
            raise ValueError(f"reference sync: the policy lacks {sorted(set(params) - seen)[:3]}")

    def save(self, path: Path) -> None:
        save_model(self.model, str(path))

    def load(self, path: Path) -> None:
        load_model(self.model, str(path), device=str(next(self.model.parameters()).device))
