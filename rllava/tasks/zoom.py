"""`zoom`: a tiny label in a large cluttered image, unreadable unless the region is cropped.

Each row also carries a tool-use demonstration (`demo_turns`: a zoom call on the label, then
the answer) for the `agentic_sft` warm start. The defaults are hard (a 4-character code in a
10 px font somewhere in a 448-896 px image); the options make easy variants, e.g.
`length=1, alphabet="AX", min_size=448, max_size=448, grid=2, clutter=0`: one of two letters
in one of four places, legible only in a zoomed crop.
"""
from __future__ import annotations

import json
import random

from PIL import Image, ImageDraw

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import font

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I look-alikes
PAD = 2  # white margin between the label's outline and its text


def zoom_call(bbox: list[int]) -> str:
    """The tool call of a demonstration, in the default (xml) call format."""
    return f'<tool_call>{json.dumps({"name": "zoom", "arguments": {"bbox": bbox}})}</tool_call>'


def label_size(draw: ImageDraw.ImageDraw, f, alphabet: str, length: int) -> tuple[int, int]:
    """(width, height) of the label: fits the widest code of the alphabet, so its size says nothing about the code."""
    boxes = [draw.textbbox((0, 0), c, font=f) for c in alphabet]
    width = max(b[2] - b[0] for b in boxes) * length
    height = max(b[3] for b in boxes) - min(b[1] for b in boxes)
    return width + 2 * PAD, height + 2 * PAD


def label_corner(rng: random.Random, w: int, h: int, bw: int, bh: int, grid: int) -> tuple[int, int]:
    """Top-left corner of the label: anywhere (grid=0) or centred in one of grid x grid cells. The label (outline
    included: columns bx..bx+bw, rows by..by+bh) always lies inside the image."""
    if grid <= 0:
        return rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
    cell = rng.randrange(grid * grid)
    cx, cy = (2 * (cell % grid) + 1) * w // (2 * grid), (2 * (cell // grid) + 1) * h // (2 * grid)
    # A label that fits a cell (checked by `zoom`) can still pass an edge cell's outer side by a pixel of rounding.
    return min(max(0, cx - bw // 2), w - bw - 1), min(max(0, cy - bh // 2), h - bh - 1)


@TASKS.register("zoom", template="{{ prompt }}", reward={"exact_match": 1.0})
def zoom(rng: random.Random, min_size: int = 448, max_size: int = 896, length: int = 4, clutter: int = 40,
         alphabet: str = ALPHABET, font_size: int = 10, grid: int = 0, zoom_margin: int = 2) -> Sample:
    """Read a short code printed small somewhere in a big image; stores the label's box and a zoom-then-answer demo.

    `grid` > 0 puts the label at the centre of one of grid x grid cells (0: anywhere). The demo zooms on
    the label's box grown by `zoom_margin` pixels per side, clipped to the image.
    """
    if length < 1 or not alphabet or font_size < 1 or min_size > max_size:
        raise ValueError(f"zoom: need length >= 1, a non-empty alphabet, font_size >= 1 and min_size <= max_size; "
                         f"got length={length}, alphabet={alphabet!r}, font_size={font_size}, "
                         f"min_size={min_size}, max_size={max_size}")
    w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    img = Image.new("RGB", (w, h), tuple(rng.randint(200, 240) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):  # low-contrast shapes so the label is not the only thing there
        x, y, s = rng.randint(0, w), rng.randint(0, h), rng.randint(10, max(11, min(w, h) // 6))
        colour = tuple(rng.randint(150, 230) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - s, y - s, x + s, y + s], fill=colour)
    code = "".join(rng.choice(alphabet) for _ in range(length))
    f = font(font_size)
    bw, bh = label_size(draw, f, alphabet, length)
    if bw >= w or bh >= h:
        raise ValueError(f"zoom: a {bw}x{bh} label does not fit a {w}x{h} image")
    if grid > 0 and (bw > min_size // grid or bh > min_size // grid):
        # Centred in its cell, it would run into the next cells, or off the image from an edge cell.
        raise ValueError(f"zoom: a {bw}x{bh} label does not fit a grid cell ({min_size // grid} px: min_size={min_size} "
                         f"/ grid={grid}); use a smaller grid, a shorter code or a smaller font_size")
    bx, by = label_corner(rng, w, h, bw, bh, grid)
    draw.rectangle([bx, by, bx + bw, by + bh], fill=(255, 255, 255), outline=(60, 60, 60))
    # the code centred in the label (anchor "mm": middle of the text's box)
    draw.text((bx + bw / 2, by + bh / 2), code, fill=(0, 0, 0), font=f, anchor="mm")
    box = [bx, by, bx + bw, by + bh]
    m = zoom_margin
    target = [max(0, bx - m), max(0, by - m), min(w, bx + bw + m), min(h, by + bh + m)]
    prompt = ("<image>A small white label with a code is printed somewhere in this image. "
              "What is the code? Answer with the code only.")
    return Sample(img, prompt, code, {"label_box": json.dumps(box), "width": w, "height": h,
                                      "demo_turns": [zoom_call(target), f"<answer>{code}</answer>"]})
