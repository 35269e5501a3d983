"""`zoom`: crop a region of one of the episode's images and scale it so its longer side is `zoom_size`.

The model writes `bbox` in the frame `ToolSettings.zoom_box_frame` (`env.zoom_box_frame`) names, the
frames of the box rewards' `box_frame`: `pixels` of the original (full-resolution) image, `input`
pixels of the image the model saw after rllava's and the processor's resizing (Qwen2.5-VL; the row's
`input_image_sizes`), or 0-1000 / 0-1 relative coordinates (`norm1000`: Qwen2-VL, Qwen3-VL; `norm1`).
"""
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
                 "description": "[x1, y1, x2, y2] of the region, (0, 0) top-left, in that image's pixels "
                                "unless the prompt gives another frame"},
    },
    "required": ["bbox"],
}


# The box rewards' frames (rllava.rewards.boxes.BOX_FRAMES, which envs/ may not import: same layer). A test keeps
# the two the same; "input" has no fixed size: it is the row's input_image_sizes.
ZOOM_BOX_FRAMES = ("pixels", "input", "norm1000", "norm1")
_NORM_SIZES = {"norm1000": (1000.0, 1000.0), "norm1": (1.0, 1.0)}


def frame_size(frame: str, index: int, image: Image.Image, meta: dict[str, Any]) -> tuple[float, float]:
    """(width, height) of image `index` in `frame`'s units: a coordinate over this size is the same share of the
    image in every frame. `meta` is the row's (its `image_sizes` and `input_image_sizes`, one per prompt image)."""
    if frame not in ZOOM_BOX_FRAMES:
        raise ValueError(f"env.zoom_box_frame={frame!r} is not one of {list(ZOOM_BOX_FRAMES)}")
    if frame == "pixels":
        return float(image.width), float(image.height)
    if frame in _NORM_SIZES:
        return _NORM_SIZES[frame]
    seen = meta.get("input_image_sizes") or []
    if index < len(seen):
        return float(seen[index][0]), float(seen[index][1])
    if index < len(meta.get("image_sizes") or []):
        raise ValueError("env.zoom_box_frame=input needs the row's input_image_sizes (the size each prompt image was "
                         "shown at), which rllava's dataset records; this row has none")
    # An image a tool returned is shown as returned, up to the processor's rounding to its patch grid.
    return float(image.width), float(image.height)


def clip_bbox(bbox: Any, width: int, height: int, frame: tuple[float, float] | None = None,
              units: str = "pixels") -> tuple[int, int, int, int]:
    """Integer pixel (x1, y1, x2, y2) clipped to the width x height image, x1 < x2 and y1 < y2, from `bbox` written
    in a frame `frame` = (frame width, frame height) `units` across (None: the image's own pixels); ToolError if
    not a usable box."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise ToolError(f"zoom: bbox must be a list of 4 numbers [x1, y1, x2, y2], got {echo(bbox)}")
    x1, y1, x2, y2 = bbox
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"zoom: bbox {echo(bbox)} is empty: need x1 < x2 and y1 < y2")
    fw, fh = frame or (width, height)
    # multiply before dividing: a box that is whole pixels in the image stays exact
    px = [float(v) * width / fw for v in (x1, x2)] + [float(v) * height / fh for v in (y1, y2)]
    outside = ToolError(f"zoom: bbox {echo(bbox)} lies outside the image ({fw:g} x {fh:g} {units})")
    if not all(math.isfinite(v) for v in px):
        raise outside
    # floor the start and ceil the end so a fractional box keeps every pixel it touches
    cx1, cy1 = max(0, math.floor(px[0])), max(0, math.floor(px[2]))
    cx2, cy2 = min(width, math.ceil(px[1])), min(height, math.ceil(px[3]))
    if cx2 <= cx1 or cy2 <= cy1:
        raise outside
    return cx1, cy1, cx2, cy2


def zoom_size(w: int, h: int, longer: int, min_side: int) -> tuple[int, int]:
    """Output size with the longer side = `longer`, aspect kept, and neither side below `min_side`."""
    scale = longer / max(w, h)
    return max(min_side, round(w * scale)), max(min_side, round(h * scale))


@TOOLS.register("zoom", parameters=ZOOM_PARAMETERS)
def zoom(args: dict[str, Any], ctx: ToolContext) -> Observation:
    """Crop a region [x1, y1, x2, y2] (in the zoom_box_frame setting's frame) of an image and return it enlarged."""
    args = check_arguments(args, ZOOM_PARAMETERS, "zoom")
    idx = args["image_index"]
    if not ctx.images:
        raise ToolError("zoom: this episode has no images")
    if not 0 <= idx < len(ctx.images):
        raise ToolError(f"zoom: image_index {idx} is out of range; there are {len(ctx.images)} image(s), 0..{len(ctx.images) - 1}")
    img = ctx.images[idx]
    frame = ctx.settings.zoom_box_frame
    fw, fh = frame_size(frame, idx, img, ctx.sample_meta)
    box = clip_bbox(args["bbox"], img.width, img.height, (fw, fh), "pixels" if frame in ("pixels", "input") else frame)
    crop = img.crop(box)
    size = zoom_size(crop.width, crop.height, ctx.settings.zoom_size, ctx.settings.zoom_min_side)
    out = crop.resize(size, Image.Resampling.BICUBIC)
    # the region cropped, told back in the model's own frame (whole pixels in the default frame)
    told = [round(v * f / n, 3) for v, f, n in zip(box, (fw, fh, fw, fh), (img.width, img.height) * 2)]
    return Observation(text=f"Zoomed into [{', '.join(f'{v:g}' for v in told)}] of image {idx}; the crop is shown "
                            f"at {size[0]} x {size[1]} pixels.", images=[out])
