"""Drawing helpers shared by the tasks: named colours, shapes with exact boxes, non-overlapping scenes."""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 200, 30),
    "purple": (140, 60, 190), "orange": (245, 130, 20), "gray": (110, 110, 110), "cyan": (30, 190, 200),
}
BACKGROUND = (240, 240, 240)
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass
class Obj:
    """A drawn shape and its tight bounding box [x1, y1, x2, y2] in pixels (inclusive of its outline)."""

    shape: str
    color: str
    box: list[int]

    def as_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "box": self.box}


_DRAWERS = {
    "circle": lambda d, cx, cy, r, fill: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill),
    "square": lambda d, cx, cy, r, fill: d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill),
    "triangle": lambda d, cx, cy, r, fill: d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill),
}
SHAPES = tuple(_DRAWERS)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, cx: int, cy: int, r: int) -> list[int]:
    """Draw `shape` centred at (cx, cy) with half-size r; return its bounding box."""
    if shape not in _DRAWERS:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    _DRAWERS[shape](draw, cx, cy, r, COLORS[color])
    return [cx - r, cy - r, cx + r, cy + r]


MAX_REDRAWS = 20  # positions tried for a square that meets another (the cell border leaves room for one)


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 1) -> bool:
    """Whether two boxes (x1, y1, x2, y2, inclusive pixels) come within `gap` pixels of each other."""
    return a[0] - gap <= b[2] and b[0] - gap <= a[2] and a[1] - gap <= b[3] and b[1] - gap <= a[3]


def scene(rng: random.Random, size: int, grid: int, specs: list[tuple[str, str]], radius: tuple[int, int],
          background: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, list[Obj]]:
    """Draw (shape, colour) specs in distinct cells of a grid x grid layout, jittered inside the cell.

    Cells keep objects apart; the cell size bounds the radius. Two squares in neighbouring cells may still meet
    at the cell border and read as one rectangle, so such a square's position is drawn again (only those
    samples change; round shapes that touch stay two shapes).
    """
    if len(specs) > grid * grid:
        raise ValueError(f"{len(specs)} objects do not fit a {grid}x{grid} grid")
    cell = size // grid
    if cell < 6:  # a cell holds a shape of half-size cell // 2 - 1: under 2 px it is a dot, or nothing (PIL raises)
        raise ValueError(f"size={size} is too small for a {grid}x{grid} grid of shapes: at least {6 * grid} pixels")
    r_max = min(radius[1], cell // 2 - 1)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    cells = rng.sample(range(grid * grid), len(specs))
    objs = []
    squares: list[tuple[int, int, int, int]] = []
    for (shape, color), c in zip(specs, cells):
        r = rng.randint(min(radius[0], r_max), r_max)
        x0, y0 = (c % grid) * cell, (c // grid) * cell
        for _ in range(MAX_REDRAWS if shape == "square" else 1):
            cx = rng.randint(x0 + r, x0 + cell - r - 1)
            cy = rng.randint(y0 + r, y0 + cell - r - 1)
            if not any(_touch((cx - r, cy - r, cx + r, cy + r), b) for b in squares):
                break
        if shape == "square":
            squares.append((cx - r, cy - r, cx + r, cy + r))
        objs.append(Obj(shape, color, draw_shape(draw, shape, color, cx, cy, r)))
    rng.shuffle(objs)  # the stored order says nothing about the position
    return img, objs


def font(size: int = 10) -> ImageFont.ImageFont:
    """PIL's built-in default font (FreeType when available, else the bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow or no FreeType
        return ImageFont.load_default()
