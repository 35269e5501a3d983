"""Reward shaping: `fn(scores [B], response_lengths [B], cfg, max_new_tokens) -> scores [B]`, where
`max_new_tokens` is the pipeline's length limit (rollout.max_new_tokens; multi-turn: env.max_total_tokens).

Shapers run in config order after the reward functions and before advantages; each returns new
scores (higher is better) and never edits its input.
"""
from __future__ import annotations

from typing import Any

import torch

from rllava.registry import Registry

REWARD_SHAPERS = Registry("reward_shaping", "score adjustments applied in order (algorithm.reward_shaping)")


@REWARD_SHAPERS.register("overlong_penalty")
def overlong_penalty(scores: torch.Tensor, response_lengths: torch.Tensor, cfg: Any, max_new_tokens: int) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to Lmax - Lbuf, linear down to -factor at Lmax, -factor beyond."""
    buf, factor = cfg.overlong_buffer_len, cfg.overlong_penalty_factor
    if not 0 < buf <= max_new_tokens:
        raise ValueError(f"algorithm.overlong_buffer_len must be in (0, the length limit {max_new_tokens}], got {buf}")
    length = response_lengths.to(scores.dtype)
    # (Lmax - Lbuf - L) / Lbuf is 0 at the buffer's start and -1 at Lmax; clamping gives both flat parts.
    penalty = ((max_new_tokens - buf - length) / buf).clamp(-1.0, 0.0) * factor
    return scores + penalty
