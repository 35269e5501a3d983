"""The scalar reward of a multi-turn episode, from its final answer, its format and its per-turn tool rewards."""
from __future__ import annotations

from typing import Optional

DEFAULT_WEIGHTS: dict[str, Optional[float]] = {
    "answer": 1.0,  # x the final answer's reward
    "format": 0.0,  # x 1 if the episode ended in a well-formed answer with no malformed turn, else 0
    "tool": 1.0,  # x the sum of per-turn tool rewards and penalties
    "tool_cap": None,  # the tool sum is cut to at most this (stops farming +tool_reward by calling tools forever)
}


def episode_reward(final_answer_reward: float, format_ok: bool, turn_rewards: list[float],
                   weights: Optional[dict[str, Optional[float]]] = None) -> float:
    """answer * final_answer_reward + format * [format_ok] + tool * min(sum(turn_rewards), tool_cap)."""
    unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown episode reward weight(s) {unknown}; valid: {sorted(DEFAULT_WEIGHTS)}")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    tools = float(sum(turn_rewards))
    if w["tool_cap"] is not None:
        tools = min(tools, float(w["tool_cap"]))
    return float(w["answer"] * final_answer_reward + w["format"] * float(format_ok) + w["tool"] * tools)
