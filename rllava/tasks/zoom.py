"""`zoom`: a tiny label in a large cluttered image, unreadable unless the region is cropped."""
from __future__ import annotations

import json
import random

from PIL import Image, ImageDraw

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import font

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I look-alikes


@TASKS.register("zoom", template="{{ prompt }}", reward={"exact_match": 1.0})
def zoom(rng: random.Random, min_size: int = 448, max_size: int = 896, length: int = 4, clutter: int = 40) -> Sample:
    """Read a short code printed small somewhere in a big image; stores the label's box for zoom tools."""
    w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    img = Image.new("RGB", (w, h), tuple(rng.randint(200, 240) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):  # low-contrast shapes so the label is not the only thing there
        x, y, s = rng.randint(0, w), rng.randint(0, h), rng.randint(10, max(11, min(w, h) // 6))
        colour = tuple(rng.randint(150, 230) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - s, y - s, x + s, y + s], fill=colour)
    code = "".join(rng.choice(ALPHABET) for _ in range(length))
    f = font(10)
    x1, y1, x2, y2 = draw.textbbox((0, 0), code, font=f)
    pad = 2
    bw, bh = x2 - x1 + 2 * pad, y2 - y1 + 2 * pad
    bx, by = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
    draw.rectangle([bx, by, bx + bw, by + bh], fill=(255, 255, 255), outline=(60, 60, 60))
    draw.text((bx + pad - x1, by + pad - y1), code, fill=(0, 0, 0), font=f)
    box = [bx, by, bx + bw, by + bh]
    prompt = ("<image>A small white label with a code is printed somewhere in this image. "
              "What is the code? Answer with the code only.")
    return Sample(img, prompt, code, {"label_box": json.dumps(box), "width": w, "height": h})
