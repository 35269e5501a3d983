"""`counting`: CLEVR-like scenes of coloured shapes; "How many red circles are there?"."""
from __future__ import annotations

import json
import random

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import PLURAL, scene

# Easy is what a ~1 M-param VLM can learn by RL on CPU: a small image, big objects, two colours, one shape.
DIFFICULTY: dict[str, dict] = {
    # "trivial": one colour and shape, no distractors: the quickstart's CPU-minutes budget.
    "trivial": dict(size=64, grid=3, colors=("red",), shapes=("circle",), max_count=3, max_distractors=0,
                    radius=(8, 9)),
    "easy": dict(size=64, grid=3, colors=("red", "blue"), shapes=("circle",), max_count=3, max_distractors=2,
                 radius=(8, 9)),
    "medium": dict(size=96, grid=4, colors=("red", "blue", "green"), shapes=("circle", "square"), max_count=4,
                   max_distractors=4, radius=(7, 10)),
    "hard": dict(size=112, grid=5, colors=("red", "blue", "green", "yellow", "purple"),
                 shapes=("circle", "square", "triangle"), max_count=5, max_distractors=8, radius=(5, 9)),
}


def _level(difficulty: str) -> dict:
    if difficulty not in DIFFICULTY:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose from {sorted(DIFFICULTY)}")
    return DIFFICULTY[difficulty]


def distractor_specs(rng: random.Random, lv: dict, target: tuple[str, str], k: int) -> list[tuple[str, str]]:
    """k (shape, colour) pairs that are not the target pair."""
    others = [(s, c) for s in lv["shapes"] for c in lv["colors"] if (s, c) != target]
    return [rng.choice(others) for _ in range(k)]


@TASKS.register("counting", template="{{ prompt }} Answer with a number.", reward={"count": 1.0})
def counting(rng: random.Random, difficulty: str = "easy") -> Sample:
    """Count the objects of one colour and shape in a scene (difficulty: easy | medium | hard)."""
    lv = _level(difficulty)
    shape, color = rng.choice(lv["shapes"]), rng.choice(lv["colors"])
    count = rng.randint(0, lv["max_count"])
    specs = [(shape, color)] * count + distractor_specs(rng, lv, (shape, color), rng.randint(0, lv["max_distractors"]))
    img, objs = scene(rng, lv["size"], lv["grid"], specs, lv["radius"])
    return Sample(img, f"<image>How many {color} {PLURAL[shape]} are there?", str(count),
                  {"count": count, "color": color, "shape": shape, "difficulty": difficulty,
                   "objects": json.dumps([o.as_dict() for o in objs])})
