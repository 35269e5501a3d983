"""`arithmetic`: text only, for text LLMs; "What is 7 + 3 * 2?"."""
from __future__ import annotations

import random

from rllava.tasks.base import TASKS, Sample


def evaluate(numbers: list[int], ops: list[str]) -> int:
    """The value of numbers[0] ops[0] numbers[1] ...; `*` binds tighter than `+` and `-`."""
    total, sign, term = 0, 1, numbers[0]
    for op, x in zip(ops, numbers[1:]):
        if op == "*":
            term *= x
        else:
            total, sign, term = total + sign * term, 1 if op == "+" else -1, x
    return total + sign * term


def random_expression(rng: random.Random, terms: int, max_value: int, ops: str, task: str) -> tuple[str, int]:
    """A random expression of `terms` integers in [0, max_value] joined by operators from `ops`, and its value."""
    if terms < 1 or max_value < 0 or not ops or set(ops) - set("+-*"):
        raise ValueError(f"{task}: need terms >= 1, max_value >= 0 and ops from '+-*', got {terms}, {max_value}, {ops!r}")
    numbers = [rng.randint(0, max_value) for _ in range(terms)]
    chosen = [rng.choice(ops) for _ in range(terms - 1)]
    expression = " ".join([str(numbers[0])] + [f"{op} {x}" for op, x in zip(chosen, numbers[1:])])
    return expression, evaluate(numbers, chosen)


@TASKS.register("arithmetic", template="{{ prompt }} Answer with a number.", reward={"count": 1.0})
def arithmetic(rng: random.Random, terms: int = 2, max_value: int = 9, ops: str = "+-") -> Sample:
    """The value of a short integer expression (no image: a task for text LLMs); ops from "+-*"."""
    expression, value = random_expression(rng, terms, max_value, ops, "arithmetic")
    return Sample(None, f"What is {expression}?", str(value), {"expression": expression})
