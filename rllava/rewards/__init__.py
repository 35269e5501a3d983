"""Reward functions: the `REWARDS` registry, the built-ins, and `RewardFunction` (weighted combination)."""
from rllava.rewards import boxes, choice, count, format_tags, math_answer  # noqa: F401  (registers the built-ins)
from rllava.rewards.combine import RewardFunction, resolve_reward
from rllava.rewards.registry import REWARDS

__all__ = ["REWARDS", "RewardFunction", "resolve_reward"]
