"""`motion`: a short video (a list of frames) of a shape moving one way; "Which way does the red circle move?"."""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import BACKGROUND, draw_shape

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@TASKS.register("motion", template="{{ prompt }} Answer left, right, up or down.", reward={"exact_match": 1.0})
def motion(rng: random.Random, frames: int = 4, size: int = 64, distractors: int = 1) -> Sample:
    """Which way one shape moves across the frames of a short video (frames, size, distractors: still shapes)."""
    r = 6
    if frames < 2:  # one frame shows no motion (and zero, no video)
        raise ValueError(f"motion: frames must be >= 2, got {frames}")
    if size < 4 * r + 2:
        raise ValueError(f"motion: size must be >= {4 * r + 2} pixels, got {size}")
    step = (size - 4 * r) // (frames - 1) // 2
    if step < 1:  # the circle would stand still
        raise ValueError(f"motion: frames={frames} is too many for size={size}: the circle would not move "
                         f"(at most {(size - 4 * r) // 2 + 1} frames at this size)")
    direction = rng.choice(sorted(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    travel = step * (frames - 1)
    # Start where the whole path stays inside the frame.
    x0 = rng.randint(r + max(0, -dx * travel), size - r - 1 - max(0, dx * travel))
    y0 = rng.randint(r + max(0, -dy * travel), size - r - 1 - max(0, dy * travel))
    still = [(rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)) for _ in range(distractors)]
    video = []
    for k in range(frames):
        img = Image.new("RGB", (size, size), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for sx, sy in still:
            draw_shape(draw, "square", "blue", sx, sy, r - 1)
        draw_shape(draw, "circle", "red", x0 + dx * step * k, y0 + dy * step * k, r)
        video.append(img)
    return Sample(None, "<video>Which way does the red circle move?", direction,
                  {"direction": direction, "frames": frames}, video=video)
