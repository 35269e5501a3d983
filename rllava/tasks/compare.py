"""`compare`: two images in one prompt; "Which image has more red circles, 1 or 2?"."""
from __future__ import annotations

import random

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import scene


@TASKS.register("compare", template="{{ prompt }} Answer 1 or 2.", reward={"count": 1.0})
def compare(rng: random.Random, size: int = 64, max_count: int = 4) -> Sample:
    """Which of two images holds more red circles (several images per prompt; counts always differ)."""
    if not 1 <= max_count <= 9:  # two different counts, each fitting the 3x3 grid
        raise ValueError(f"compare: max_count must be in [1, 9], got {max_count}")
    a, b = rng.sample(range(max_count + 1), 2)
    images = [scene(rng, size, 3, [("circle", "red")] * k, (7, 9))[0] for k in (a, b)]
    return Sample(images, "<image><image>Which image has more red circles?", "1" if a > b else "2",
                  {"counts": [a, b]})
