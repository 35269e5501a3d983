"""The reward registry: `@REWARDS.register("name")` on `fn(response, answer, **meta) -> float | dict`."""
from __future__ import annotations

from rllava.registry import Registry

REWARDS = Registry("reward", "reward functions: fn(response, answer, **meta) -> float | {'overall': ..., ...}")
