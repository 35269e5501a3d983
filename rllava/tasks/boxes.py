"""`grounding` (one box for a described object) and `detection` (every box of a class)."""
from __future__ import annotations

import json
import random

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.counting import DIFFICULTY, _level, distractor_specs
from rllava.tasks.draw import scene


@TASKS.register("grounding", template="{{ prompt }}", reward={"iou": 1.0})
def grounding(rng: random.Random, difficulty: str = "medium") -> Sample:
    """Find the one object of a given colour and shape; the answer is its box [x1, y1, x2, y2] in pixels."""
    lv = _level(difficulty)
    if lv["max_distractors"] < 1:  # "trivial": one object, nothing to tell it from
        raise ValueError(f"grounding: difficulty={difficulty!r} has no distractor objects; choose from "
                         f"{sorted(k for k, v in DIFFICULTY.items() if v['max_distractors'] > 0)}")
    shape, color = rng.choice(lv["shapes"]), rng.choice(lv["colors"])
    specs = [(shape, color)] + distractor_specs(rng, lv, (shape, color), rng.randint(1, lv["max_distractors"]))
    img, objs = scene(rng, lv["size"], lv["grid"], specs, lv["radius"])
    box = next(o.box for o in objs if (o.shape, o.color) == (shape, color))
    prompt = (f"<image>Where is the {color} {shape}? Answer with its bounding box [x1, y1, x2, y2] in pixels "
              f"(the image is {lv['size']}x{lv['size']}).")
    return Sample(img, prompt, json.dumps(box), {"color": color, "shape": shape, "difficulty": difficulty,
                                                 "width": lv["size"], "height": lv["size"],
                                                 "objects": json.dumps([o.as_dict() for o in objs])})


# What a detection query names: a colour, a shape, or both.
_QUERIES = {
    "color": lambda o, color, shape: o.color == color,
    "shape": lambda o, color, shape: o.shape == shape,
    "both": lambda o, color, shape: (o.color, o.shape) == (color, shape),
}
_PHRASES = {"color": lambda color, shape: f"{color} object", "shape": lambda color, shape: shape,
            "both": lambda color, shape: f"{color} {shape}"}


@TASKS.register("detection", template="{{ prompt }}", reward={"detection": 1.0})
def detection(rng: random.Random, difficulty: str = "medium", query: str = "any") -> Sample:
    """Open-vocabulary detection: every box of a colour / shape class (query: color | shape | both | any)."""
    lv = _level(difficulty)
    kinds = list(_QUERIES) if query == "any" else [query]
    if kinds[0] not in _QUERIES:
        raise ValueError(f"unknown detection query {query!r}; choose from {sorted(_QUERIES)} or 'any'")
    kind = rng.choice(kinds)
    shape, color = rng.choice(lv["shapes"]), rng.choice(lv["colors"])
    n = rng.randint(1, min(lv["grid"] ** 2, lv["max_count"] + lv["max_distractors"]))
    specs = [(rng.choice(lv["shapes"]), rng.choice(lv["colors"])) for _ in range(n)]
    img, objs = scene(rng, lv["size"], lv["grid"], specs, lv["radius"])
    boxes = [o.box for o in objs if _QUERIES[kind](o, color, shape)]
    phrase = _PHRASES[kind](color, shape)
    prompt = (f"<image>Find every {phrase} in the image. Answer with a JSON list of bounding boxes "
              f"[[x1, y1, x2, y2], ...] in pixels, or [] if there is none.")
    return Sample(img, prompt, json.dumps(boxes), {"query": kind, "target": phrase, "count": len(boxes),
                                                   "difficulty": difficulty, "width": lv["size"],
                                                   "height": lv["size"],
                                                   "objects": json.dumps([o.as_dict() for o in objs])})
