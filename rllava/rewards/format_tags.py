"""Format rewards: `format` wants `<think>...</think><answer>...</answer>`; `answer_tag` just `<answer>...</answer>`;
`think_boxed` wants `<think>...</think>` then a final answer in `\\boxed{}` (the R1-V / EasyR1 math prompt)."""
from __future__ import annotations

import re

from rllava.rewards.extract import last_boxed
from rllava.rewards.registry import REWARDS

# The whole response: one think block, then one answer block, nothing else but whitespace.
_THINK_ANSWER = re.compile(r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*"
                           r"<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*", re.DOTALL)
# One think block first; what follows is free text that must not open another.
_THINK_THEN = re.compile(r"\s*<think>(?:(?!</?think>).)*</think>((?:(?!</?think>).)*)", re.DOTALL)
_ANSWER_ONLY = re.compile(r"<answer>((?:(?!</?answer>).)*)</answer>", re.DOTALL)


@REWARDS.register("format")
def format_reward(response: str, answer: str = "", **meta) -> float:
    """1 if the response is exactly `<think>...</think><answer>non-empty</answer>` (whitespace allowed around)."""
    m = _THINK_ANSWER.fullmatch(response)
    return float(bool(m and m.group(1).strip()))


@REWARDS.register("answer_tag")
def answer_tag_reward(response: str, answer: str = "", **meta) -> float:
    """1 if the response holds exactly one non-empty `<answer>...</answer>` block (text around it is allowed)."""
    found = _ANSWER_ONLY.findall(response)
    tags = len(re.findall(r"</?answer>", response))
    return float(len(found) == 1 and tags == 2 and bool(found[0].strip()))


@REWARDS.register("think_boxed")
def think_boxed_reward(response: str, answer: str = "", **meta) -> float:
    """1 if the response is one `<think>...</think>` block, then text holding a non-empty `\\boxed{...}`."""
    m = _THINK_THEN.fullmatch(response)
    boxed = last_boxed(m.group(1)) if m else None
    return float(bool(boxed and boxed.strip()))
