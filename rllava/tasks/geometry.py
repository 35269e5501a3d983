"""`geometry`: a drawn figure with labelled lengths or angles; area / perimeter / angle questions."""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw

from rllava.tasks.base import TASKS, Sample
from rllava.tasks.draw import font

INK, FILL = (20, 20, 20), (200, 225, 250)
TRIPLES = [(3, 4, 5), (6, 8, 10), (5, 12, 13), (9, 12, 15), (8, 15, 17)]
Figure = Callable[[random.Random, ImageDraw.ImageDraw, int], tuple[str, str, dict]]


def _num(x: float) -> str:
    """5.0 -> "5", 7.5 -> "7.5"."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int) -> None:
    """Text centred at xy, clamped inside the image."""
    f = font(max(10, size // 14))
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=f)
    w, h = x2 - x1, y2 - y1
    x = min(max(2, xy[0] - w / 2), size - w - 2)
    y = min(max(2, xy[1] - h / 2), size - h - 2)
    draw.text((x - x1, y - y1), text, fill=INK, font=f)


def rectangle(rng: random.Random, draw: ImageDraw.ImageDraw, size: int) -> tuple[str, str, dict]:
    w, h = rng.randint(2, 12), rng.randint(2, 12)
    scale = size * 0.6 / max(w, h)
    x0, y0 = (size - w * scale) / 2, (size - h * scale) / 2
    draw.rectangle([x0, y0, x0 + w * scale, y0 + h * scale], fill=FILL, outline=INK, width=2)
    _label(draw, (size / 2, y0 + h * scale + size * 0.08), f"{w} cm", size)
    _label(draw, (x0 + w * scale + size * 0.1, size / 2), f"{h} cm", size)
    if rng.random() < 0.5:
        return "What is the area of the rectangle in square centimetres?", _num(w * h), {"w": w, "h": h}
    return "What is the perimeter of the rectangle in centimetres?", _num(2 * (w + h)), {"w": w, "h": h}


def right_triangle(rng: random.Random, draw: ImageDraw.ImageDraw, size: int) -> tuple[str, str, dict]:
    ask_hyp = rng.random() < 0.5
    a, b, c = rng.choice(TRIPLES) if ask_hyp else (rng.randint(2, 12), rng.randint(2, 12), None)
    scale = size * 0.6 / max(a, b)
    x0, y0 = (size - a * scale) / 2, (size + b * scale) / 2  # right angle at the bottom-left corner
    pts = [(x0, y0), (x0 + a * scale, y0), (x0, y0 - b * scale)]
    draw.polygon(pts, fill=FILL, outline=INK, width=2)
    m = max(4, size // 20)
    draw.rectangle([x0, y0 - m, x0 + m, y0], outline=INK)  # the right-angle mark
    _label(draw, (x0 + a * scale / 2, y0 + size * 0.08), f"{a} cm", size)
    _label(draw, (x0 - size * 0.1, y0 - b * scale / 2), f"{b} cm", size)
    if ask_hyp:
        return "What is the length of the hypotenuse in centimetres?", _num(c), {"a": a, "b": b}
    return "What is the area of the right triangle in square centimetres?", _num(a * b / 2), {"a": a, "b": b}


def triangle_angle(rng: random.Random, draw: ImageDraw.ImageDraw, size: int) -> tuple[str, str, dict]:
    A, B = rng.randrange(30, 85, 5), rng.randrange(30, 85, 5)
    C = 180 - A - B
    # Base of length 1 from P0 to P1; P2 from the angle at P0 and the law of sines.
    side = math.sin(math.radians(B)) / math.sin(math.radians(C))
    p2 = (side * math.cos(math.radians(A)), side * math.sin(math.radians(A)))
    xs, ys = [0.0, 1.0, p2[0]], [0.0, 0.0, p2[1]]
    scale = size * 0.6 / max(max(xs) - min(xs), max(ys) - min(ys))
    ox = (size - (max(xs) - min(xs)) * scale) / 2 - min(xs) * scale
    oy = (size + (max(ys) - min(ys)) * scale) / 2
    pts = [(ox + x * scale, oy - y * scale) for x, y in zip(xs, ys)]
    draw.polygon(pts, fill=FILL, outline=INK, width=2)
    cx, cy = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
    for (px, py), text in zip(pts, (f"{A}°", f"{B}°", "?")):  # labels pushed outward from the centroid
        _label(draw, (px + (px - cx) * 0.35, py + (py - cy) * 0.35), text, size)
    return "What is the angle marked '?' in degrees?", _num(C), {"A": A, "B": B}


def circle(rng: random.Random, draw: ImageDraw.ImageDraw, size: int) -> tuple[str, str, dict]:
    r = rng.randint(1, 10)
    R = size * 0.3
    c = size / 2
    draw.ellipse([c - R, c - R, c + R, c + R], fill=FILL, outline=INK, width=2)
    draw.line([(c, c), (c + R, c)], fill=INK, width=2)
    _label(draw, (c + R / 2, c - size * 0.06), f"r = {r} cm", size)
    question = rng.choice(["area", "circumference", "diameter"])
    answers = {"area": (f"{r * r}\\pi", "What is the area of the circle in square centimetres? Answer in terms of pi."),
               "circumference": (f"{2 * r}\\pi", "What is the circumference of the circle in centimetres? "
                                                 "Answer in terms of pi."),
               "diameter": (_num(2 * r), "What is the diameter of the circle in centimetres?")}
    answer, text = answers[question]
    return text, answer, {"r": r}


FIGURES: dict[str, Figure] = {"rectangle": rectangle, "right_triangle": right_triangle,
                              "triangle_angle": triangle_angle, "circle": circle}


@TASKS.register("geometry", template="{{ prompt }} Put the final answer in \\boxed{}.", reward={"math": 1.0})
def geometry(rng: random.Random, size: int = 160, figures: str = "rectangle,right_triangle,triangle_angle,circle"
             ) -> Sample:
    """A rectangle, right triangle, triangle or circle with labelled sizes; numeric answer (math reward)."""
    names = [f for f in figures.split(",") if f]
    bad = [f for f in names if f not in FIGURES]
    if bad or not names:
        raise ValueError(f"unknown geometry figure(s) {bad}; choose from {sorted(FIGURES)}")
    figure = rng.choice(names)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    question, answer, dims = FIGURES[figure](rng, ImageDraw.Draw(img), size)
    return Sample(img, f"<image>{question}", answer, {"figure": figure, "dims": json.dumps(dims)})
