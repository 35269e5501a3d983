"""Dynamic loss scaling for fp16 compute (`model.dtype=float16`, for GPUs without bf16: T4, V100).

fp16 has 5 exponent bits: gradients below about 6e-8 round to 0 and activations' gradients often are that small.
Backward therefore runs on the loss times a scale S (2^16 to start), and the optimizer sees the gradients
divided by S again, in the fp32 masters. A step whose gradients overflowed (inf or NaN) is skipped, as any
non-finite step is, and S is halved; after `growth_interval` finite steps in a row S doubles, so it settles
just under the overflow point. This is the scheme of Micikevicius et al., "Mixed Precision Training" (2018).
bf16 and fp32 have fp32's exponent range and need none of it: the scaler is then off and changes nothing.
"""
from __future__ import annotations

from typing import Any

import torch


class LossScaler:
    """The loss scale S: `scale` the loss before backward, `unscale_` the gradients, then `update` per step."""

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_interval: int = 2000,
                 backoff: float = 0.5, growth: float = 2.0, min_scale: float = 1.0):
        self.enabled = enabled
        self.scale_value = init_scale if enabled else 1.0
        self.growth_interval, self.backoff, self.growth, self.min_scale = growth_interval, backoff, growth, min_scale
        self.good_steps = 0  # finite steps since the scale last changed

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    @torch.no_grad()
    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide the (fp32 master) gradients by S in place."""
        if self.enabled and grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)

    def update(self, finite: bool) -> None:
        """After a step: halve S on an overflow, double it after `growth_interval` finite steps in a row."""
        if not self.enabled:
            return
        if not finite:
            self.scale_value = max(self.min_scale, self.scale_value * self.backoff)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale_value *= self.growth
            self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale_value, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.enabled and state:  # a checkpoint written without fp16 keeps the initial scale
            self.scale_value, self.good_steps = state["scale"], state["good_steps"]
