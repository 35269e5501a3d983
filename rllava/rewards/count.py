"""`count` (integer answers) and `exact_match` (short strings such as a label read off an image)."""
from __future__ import annotations

import math
import re

from rllava.rewards.extract import final_answer, last_integer
from rllava.rewards.registry import REWARDS


@REWARDS.register("count", accuracy=True)
def count_reward(response: str, answer: str, **meta) -> dict[str, float]:
    """1 if the last whole number in the final answer (digits or a word like "three") equals the answer."""
    try:
        gold_value = float(str(answer).strip())
    except ValueError:
        gold_value = math.nan
    if not gold_value.is_integer():  # also NaN and inf
        raise ValueError(f"count reward: ground truth {answer!r} is not an integer")
    gold = int(gold_value)
    pred = last_integer(final_answer(response))
    ok = pred is not None and pred == gold
    return {"overall": float(ok), "accuracy": float(ok)}


def normalize_text(text: str) -> str:
    """Lower-case, strip markdown bold, quotes, trailing punctuation and repeated whitespace."""
    text = re.sub(r"\s+", " ", text.replace("**", "").strip().lower())
    return text.strip("\"'`“”‘’").strip().rstrip(".!").strip()


@REWARDS.register("exact_match", accuracy=True)
def exact_match_reward(response: str, answer: str, **meta) -> dict[str, float]:
    """1 if the final answer equals the ground truth after normalisation (case, quotes, spacing)."""
    ok = normalize_text(final_answer(response)) == normalize_text(str(answer))
    return {"overall": float(ok), "accuracy": float(ok)}


@REWARDS.register("number_format")
def number_format_reward(response: str, answer: str = "", **meta) -> float:
    """1 if the final answer holds a whole number at all: a dense shaping term for counting from scratch."""
    return float(last_integer(final_answer(response)) is not None)
