"""`choice`: a multiple-choice question about an image; the options live in the row's `choices` column.

The prompt template lists the options (as ScienceQA- or MMMU-style rows are usually rendered), and the
`choice` reward accepts the option's letter or its text.
"""
from __future__ import annotations

import random

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import COLORS, SHAPES, scene

# The options under the question, lettered: a jinja loop over the row's `choices`.
OPTIONS_TEMPLATE = ("{{ prompt }}{% for c in choices | as_list %}\n({{ 'ABCDEFGHIJ'[loop.index0] }}) {{ c }}{% endfor %}"
                    "\nAnswer with the option's letter.")


@TASKS.register("choice", template=OPTIONS_TEMPLATE, reward={"choice": 1.0})
def colour_choice(rng: random.Random, size: int = 64, n_options: int = 4, objects: int = 3) -> Sample:
    """What colour is the one circle / square / triangle? n_options colours, one right (multiple choice)."""
    if not 2 <= n_options <= len(COLORS):
        raise ValueError(f"n_options={n_options}: must be in [2, {len(COLORS)}]")
    if not 1 <= objects <= len(SHAPES):
        raise ValueError(f"objects={objects}: must be in [1, {len(SHAPES)}] (one of each shape at most)")
    shapes = rng.sample(SHAPES, objects)
    colours = rng.sample(sorted(COLORS), objects)
    image, _ = scene(rng, size, 2, list(zip(shapes, colours)), (8, 14))
    asked, right = shapes[0], colours[0]
    options = [right, *rng.sample([c for c in sorted(COLORS) if c != right], n_options - 1)]
    rng.shuffle(options)
    letter = "ABCDEFGHIJ"[options.index(right)]
    return Sample(image, f"<image>What colour is the {asked}?", letter, {"choices": options, "shape": asked})
