"""Box rewards: `iou` (one box, grounding) and `detection` (a set of boxes, matched one-to-one).

Ground-truth boxes are `[x1, y1, x2, y2]` in the pixels of the row's (first) image. Predicted boxes
are read from the `<answer>` block when there is one, else from the whole response; brackets or
parentheses, commas or spaces are accepted, and so is Qwen2-VL's `(x1,y1),(x2,y2)`. `box_frame` (set with
`reward.kwargs`) says how the model writes them, since models differ:
- `pixels`: the original image's pixels, as the ground truth (the default);
- `input`: the pixels of the image the model saw, after rllava's and the processor's resizing
  (Qwen2.5-VL); rescaled with the row's `image_sizes` and `input_image_sizes`;
- `norm1000`: 0-1000 relative coordinates (Qwen2-VL, Qwen3-VL, InternVL);
- `norm1`: 0-1 relative coordinates.
"""
from __future__ import annotations

import json
import re

from rllava.rewards.extract import answer_tag
from rllava.rewards.matching import hungarian
from rllava.rewards.registry import REWARDS

Box = tuple[float, float, float, float]
MAX_BOXES = 100  # garbage responses can list thousands; matching is cubic

_NUM = r"([-+]?\d+(?:\.\d+)?)"
_SEP = r"(?:\s*,\s*|\s+)"  # a comma or whitespace; one way to read each run of spaces (else backtracking is k^4)
_POINT = r"\(\s*" + _NUM + r"\s*,\s*" + _NUM + r"\s*\)"
# `[x1, y1, x2, y2]` (or in parentheses), or Qwen2-VL's own `(x1,y1),(x2,y2)` (inside <|box_start|>...<|box_end|>).
_BOX = re.compile(r"[\[(]\s*" + _SEP.join([_NUM] * 4) + r"\s*[\])]|" + _POINT + r"(?:\s*,\s*|\s*)" + _POINT)


def _ordered(b: tuple[float, ...]) -> Box:
    x1, y1, x2, y2 = b
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def parse_boxes(text: str) -> list[Box]:
    """All `[x1, y1, x2, y2]` boxes in the answer block (or the whole text), corners put in order."""
    span = answer_tag(text)
    found = _BOX.findall(span if span is not None else text)  # 8 groups: the 4 of the form that matched are set
    return [_ordered(tuple(float(v) for v in b if v)) for b in found[:MAX_BOXES]]


def parse_gold_boxes(answer) -> list[Box]:
    """Ground truth as a JSON list: one box `[x1,y1,x2,y2]` or a list of boxes (possibly empty)."""
    try:
        value = json.loads(answer) if isinstance(answer, str) else answer
    except ValueError:  # JSON's own message ("Extra data: line 1 column 3") names neither the field nor the value
        value = None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"box ground truth must be a JSON list, got {answer!r}")
    if len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    boxes = []
    for b in value:
        if not (isinstance(b, (list, tuple)) and len(b) == 4):
            raise ValueError(f"box ground truth {answer!r}: {b!r} is not [x1, y1, x2, y2]")
        boxes.append(_ordered(tuple(float(v) for v in b)))
    return boxes


BOX_FRAMES = ("pixels", "input", "norm1000", "norm1")


def to_image_pixels(boxes: list[Box], frame: str, meta: dict) -> list[Box]:
    """Predicted `boxes`, written in `frame`, in the pixels of the row's first image (the ground truth's frame)."""
    if frame not in BOX_FRAMES:
        raise ValueError(f"box_frame={frame!r} is not one of {list(BOX_FRAMES)}")
    if frame == "pixels" or not boxes:
        return boxes
    sizes = meta.get("image_sizes") or []
    if not sizes or (frame == "input" and not meta.get("input_image_sizes")):
        raise ValueError(f"box_frame={frame} needs the row's image sizes (image_sizes, input_image_sizes), which "
                         "rllava's dataset records for rows with images")
    width, height = sizes[0]
    unit = {"norm1000": (1000.0, 1000.0), "norm1": (1.0, 1.0)}.get(frame) or tuple(meta["input_image_sizes"][0])
    sx, sy = width / unit[0], height / unit[1]
    return [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@REWARDS.register("iou", accuracy=True)
def iou_reward(response: str, answer: str, box_frame: str = "pixels", **meta) -> dict[str, float]:
    """IoU of the first predicted box with the true box; accuracy = IoU >= 0.5."""
    gold = parse_gold_boxes(answer)
    if len(gold) != 1:
        raise ValueError(f"iou reward: expected exactly one ground-truth box, got {answer!r}")
    pred = to_image_pixels(parse_boxes(response), box_frame, meta)
    value = iou(pred[0], gold[0]) if pred else 0.0
    return {"overall": value, "accuracy": float(value >= 0.5)}


def match_boxes(pred: list[Box], gold: list[Box]) -> list[tuple[int, int, float]]:
    """One-to-one matching maximising total IoU (Hungarian); returns (pred, gold, IoU) triples."""
    if not pred or not gold:
        return []
    pairs = hungarian([[1.0 - iou(p, g) for g in gold] for p in pred])
    return [(i, j, iou(pred[i], gold[j])) for i, j in pairs]


def count_true_positives(pred: list[Box], gold: list[Box], threshold: float) -> int:
    """The most one-to-one pairs with IoU >= `threshold`. The total-IoU matching can have fewer: one near-perfect
    pair may take the box that two fair pairs would have shared out."""
    if not pred or not gold:
        return 0
    hit = [[iou(p, g) >= threshold for g in gold] for p in pred]
    return sum(hit[i][j] for i, j in hungarian([[-float(h) for h in row] for row in hit]))


@REWARDS.register("detection", accuracy=True)
def detection_reward(response: str, answer: str, iou_threshold: float = 0.5, box_frame: str = "pixels",
                     **meta) -> dict[str, float]:
    """Set-of-boxes reward.

    overall = sum of matched IoUs / max(#pred, #gold), boxes matched one-to-one to maximise total
    IoU (Hungarian): a smooth score that is 1 only for a perfect set, and that extra or missed
    boxes lower. f1/precision/recall count as true positives the most one-to-one pairs with
    IoU >= `iou_threshold` (0.5), a matching of its own. accuracy = 1 when f1 == 1.
    Both sets empty scores 1 (nothing there, nothing predicted).
    """
    gold = parse_gold_boxes(answer)
    pred = to_image_pixels(parse_boxes(response), box_frame, meta)
    if not gold and not pred:
        return {"overall": 1.0, "accuracy": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "mean_iou": 1.0}
    matches = match_boxes(pred, gold)
    tp = count_true_positives(pred, gold, iou_threshold)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    mean_iou = sum(v for _, _, v in matches) / max(len(pred), len(gold))
    return {"overall": mean_iou, "accuracy": float(f1 == 1.0), "f1": f1, "precision": precision, "recall": recall,
            "mean_iou": mean_iou}
