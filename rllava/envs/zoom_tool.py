"""`zoom`: crop a region of one of the episode's images and scale it so its longer side is `zoom_size`."""
from __future__ import annotations

import math
from typing import Any

from PIL import Image

from rllava.envs.base import TOOLS, Observation, ToolContext, ToolError, check_arguments, echo

ZOOM_PARAMETERS = {
    "type": "object",
    "properties": {
        "image_index": {"type": "integer", "default": 0,
                        "description": "which image: 0 is the first prompt image; images returned by tools follow"},
        "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                 "description": "[x1, y1, x2, y2] in pixels of that image, (0, 0) top-left"},
    },
    "required": ["bbox"],
}


def clip_bbox(bbox: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2) clipped to the image, x1 < x2 and y1 < y2; ToolError if not a usable box."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise ToolError(f"zoom: bbox must be a list of 4 numbers [x1, y1, x2, y2], got {echo(bbox)}")
    x1, y1, x2, y2 = bbox
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"zoom: bbox {echo(bbox)} is empty: need x1 < x2 and y1 < y2")
    # floor the start and ceil the end so a fractional box keeps every pixel it touches
    cx1, cy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    cx2, cy2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    if cx2 <= cx1 or cy2 <= cy1:
        raise ToolError(f"zoom: bbox {echo(bbox)} lies outside the image ({width} x {height} pixels)")
    return cx1, cy1, cx2, cy2


def zoom_size(w: int, h: int, longer: int, min_side: int) -> tuple[int, int]:
    """Output size with the longer side = `longer`, aspect kept, and neither side below `min_side`."""
    scale = longer / max(w, h)
    return max(min_side, round(w * scale)), max(min_side, round(h * scale))


@TOOLS.register("zoom", parameters=ZOOM_PARAMETERS)
def zoom(args: dict[str, Any], ctx: ToolContext) -> Observation:
    """Crop a region [x1, y1, x2, y2] (pixels) of an image and return it enlarged."""
    args = check_arguments(args, ZOOM_PARAMETERS, "zoom")
    idx = args["image_index"]
    if not ctx.images:
        raise ToolError("zoom: this episode has no images")
    if not 0 <= idx < len(ctx.images):
        raise ToolError(f"zoom: image_index {idx} is out of range; there are {len(ctx.images)} image(s), 0..{len(ctx.images) - 1}")
    img = ctx.images[idx]
    box = clip_bbox(args["bbox"], img.width, img.height)
    crop = img.crop(box)
    size = zoom_size(crop.width, crop.height, ctx.settings.zoom_size, ctx.settings.zoom_min_side)
    out = crop.resize(size, Image.Resampling.BICUBIC)
    return Observation(text=f"Zoomed into {list(box)} of image {idx}; the crop is shown at {size[0]} x {size[1]} pixels.",
                       images=[out])
