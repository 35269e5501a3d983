"""Image and video helpers: read any image reference, resize into a pixel budget, sample video frames.

An image reference is a path (relative to a base folder), raw bytes, a `{"bytes": ..., "path": ...}`
dict (the HF `datasets` Image layout), a PIL image or an HxWxC uint8 array. Images are turned
the way a viewer shows them (EXIF orientation), transparent pixels are composited over white, and
16-bit or float images are scaled to 8 bits before the RGB conversion.

A video is a list of frame references or a video file (decoded with PyAV, or torchvision's
`read_video` where it exists). Sampling returns the frames with `FrameTimes`, which the dataset
hands to the processor as video metadata (its sampling rate and frame times).
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class MediaError(ValueError):
    """An image or video that cannot be read; the dataset adds the file/row/field it came from."""


def resolve_path(path: str, base_dir: Path | None) -> Path:
    """`path` as is when absolute, else relative to `base_dir` (a `file://` prefix is dropped)."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    # Only "~" and "~/..." name the home folder: Path.expanduser() on "~draft.png" looks for a user "draft.png"
    # and raises RuntimeError (not a MediaError, so a bad row could not be skipped) when there is none.
    p = Path(path).expanduser() if path == "~" or path.startswith(("~/", "~" + os.sep)) else Path(path)
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def _source(ref: Any, base_dir: Path | None) -> Any:
    """What to hand to `Image.open`: a path or a bytes buffer; PIL images and arrays pass through."""
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return _source(ref["bytes"], base_dir)
        if ref.get("path"):
            return _source(ref["path"], base_dir)
        raise MediaError(f"image dict has neither 'bytes' nor 'path' (keys: {sorted(ref)})")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(ref))
    if isinstance(ref, str):
        p = resolve_path(ref, base_dir)
        if not p.is_file():
            raise MediaError(f"image file {str(p)!r} not found")
        return p
    if isinstance(ref, (Path, Image.Image)):
        return ref
    if hasattr(ref, "__array_interface__") and getattr(ref, "ndim", 0) == 3:
        return ref
    raise MediaError(f"unsupported image value of type {type(ref).__name__} "
                     "(expected a path, bytes, {'bytes','path'} dict, PIL image or HxWxC array)")


def check_image_ref(ref: Any, base_dir: Path | None) -> None:
    """Cheap validation (type, file exists) without decoding."""
    _source(ref, base_dir)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose does).
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation tag, 1 when absent. Read with the base `Image.getexif`, which only looks at
    the header: PNG's own `getexif` decodes the whole file when the header has no EXIF, and `image_size` must
    stay header-only and agree with `load_image` (the length estimate relies on it)."""
    try:
        value = Image.Image.getexif(im).get(0x0112, 1)
    except Exception:  # noqa: BLE001  (a corrupt EXIF block: show the pixels as stored)
        return 1
    return value if value in _ORIENT else 1


def image_size(ref: Any, base_dir: Path | None) -> tuple[int, int]:
    """(width, height) as `load_image` returns it (EXIF orientation applied), from the file header alone."""
    src = _source(ref, base_dir)
    if hasattr(src, "__array_interface__") and not isinstance(src, Image.Image):
        return int(src.shape[1]), int(src.shape[0])
    try:
        if isinstance(src, Image.Image):
            (w, h), orientation = src.size, _orientation(src)
        else:
            with Image.open(src) as im:
                (w, h), orientation = im.size, _orientation(im)
    except Exception as e:
        raise MediaError(f"cannot read image: {type(e).__name__}: {e}") from None
    return (h, w) if orientation >= 5 else (w, h)  # 5-8 turn the image by 90 degrees


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit int or float grayscale image as 8-bit "L" (`convert("RGB")` would clip it to white).
    16-bit ("I;16*") maps 0..65535 onto 0..255 exactly (divide by 257). For "I" and "F" the range is unknown,
    so the image's maximum becomes white (a contrast stretch from zero; negatives and NaN become black)."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if img.mode.startswith("I;16"):
        arr = arr / 257.0
    elif arr.size and arr.max() > 0:
        arr = arr * (255.0 / arr.max())
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited over white (as transformers' `convert_to_rgb` does): a plain
    `convert("RGB")` drops alpha, so transparent pixels take their stored colour, usually black."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit(img)
    alpha_palette = img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info or alpha_palette:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(ref: Any, base_dir: Path | None = None) -> Image.Image:
    """Decode an image reference to an upright (EXIF orientation applied) RGB PIL image."""
    src = _source(ref, base_dir)
    try:
        if isinstance(src, Image.Image):
            img = src
        elif hasattr(src, "__array_interface__"):
            img = Image.fromarray(src)
        else:
            img = Image.open(src)
        orientation = _orientation(img)  # before load(): from the header, as image_size reads it
        img.load()
        img = _to_rgb(img)
        return _drop_orientation(img.transpose(_ORIENT[orientation])) if orientation != 1 else img
    except Exception as e:
        raise MediaError(f"cannot decode image: {type(e).__name__}: {e}") from None


def _drop_orientation(img: Image.Image) -> Image.Image:
    """`img`, turned upright, without the orientation tag its metadata (`info`, copied by `transpose`) still
    holds: loading it again would turn it again. Other EXIF tags stay; XMP, which may carry the orientation
    too, is dropped (rllava reads nothing else from it)."""
    exif = Image.Image.getexif(img)  # the EXIF block of info, plus an XMP orientation when it has none
    exif.pop(0x0112, None)
    img.info.pop("Raw profile type exif", None)  # PNG's text form of the EXIF block
    img.info["exif"] = exif.tobytes()
    for key in ("xmp", "XML:com.adobe.xmp"):
        img.info.pop(key, None)
    return img


def fit_pixels(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size with the same aspect ratio whose area lies in [min_pixels, max_pixels] (unchanged if it does)."""
    area = width * height
    if min_pixels <= area <= max_pixels or area == 0:
        return width, height
    target = max_pixels if area > max_pixels else min_pixels
    scale = math.sqrt(target / area)
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    if area < min_pixels:  # rounding down must not leave it under the minimum
        while w * h < min_pixels:
            w, h = (w + 1, h) if w <= h * width / height else (w, h + 1)
    return w, h


def resize_image(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize (bicubic) into the pixel budget, keeping the aspect ratio."""
    size = fit_pixels(img.width, img.height, min_pixels, max_pixels)
    return img if size == img.size else img.resize(size, Image.BICUBIC)


def sample_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (the centre of each of k equal segments); all if n <= k."""
    if n <= k:
        return list(range(n))
    return [min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


# ------------------------------------------------------------------ video


def is_video_file(ref: Any) -> bool:
    """A single video file reference (as opposed to a frame image or a list of frames)."""
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return False
        ref = ref.get("path")
    return isinstance(ref, (str, Path)) and not str(ref).lower().endswith(IMAGE_EXTENSIONS)


# Which frames to keep of a clip of `total` frames at `fps` frames per second (sample_video's choice).
FramePick = Callable[[int, float], list[int]]


def _av_pass(path: Path, wanted: set[int]) -> tuple[dict[int, Image.Image], int]:
    """One decode of the clip: the frames at `wanted` indices, and how many frames it has."""
    import av

    kept, count = {}, 0
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(container.streams.video[0]), 1):
            if count - 1 in wanted:
                kept[count - 1] = frame.to_image()
    return kept, count


def _decode_av(path: Path, pick: FramePick) -> tuple[list[Image.Image], int, float]:
    """Only the picked frames are converted and kept: a whole minute of 1080p frames is ~20 GB. The header's
    frame count decides them; where it is missing or wrong, a second pass picks from the count decoding found."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0) or 0.0
        total = int(stream.frames or 0)
    kept, count = _av_pass(path, set(pick(total, fps)) if total > 0 else set())
    if count != total:
        total = count
        kept, _ = _av_pass(path, set(pick(total, fps)))
    return [kept[i] for i in pick(total, fps) if i in kept], total, fps


def _decode_torchvision(path: Path, pick: FramePick) -> tuple[list[Image.Image], int, float]:
    from torchvision.io import read_video  # removed in recent torchvision; present on older ones

    video, _, info = read_video(str(path), pts_unit="sec", output_format="THWC")
    fps = float(info.get("video_fps") or 0.0)
    return [Image.fromarray(video[i].numpy()) for i in pick(len(video), fps)], len(video), fps


VIDEO_DECODERS = (("av", _decode_av), ("torchvision", _decode_torchvision))


def decode_video_file(path: Path, pick: FramePick) -> tuple[list[Image.Image], int, float]:
    """The frames `pick(total, fps)` chooses of a video file, its frame count and its frame rate, with the first
    decoder that is installed."""
    if not path.is_file():
        raise MediaError(f"video file {str(path)!r} not found")
    for _, decode in VIDEO_DECODERS:
        try:
            return decode(path, pick)
        except ImportError:
            continue
        except Exception as e:
            raise MediaError(f"cannot decode video {str(path)!r}: {type(e).__name__}: {e}") from None
    raise MediaError(f"decoding the video file {str(path)!r} needs PyAV: `pip install av` "
                     "(or give the video as a list of frame images)")


def normalize_videos(value: Any) -> list[Any]:
    """A row's video field as a list of videos, each a video file reference or a list of frames.

    A string (or {"path": ...}) is one file; a list of lists is several frame-list videos; a flat
    list of image references is one frame-list video; a flat list of video files is several files.
    """
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        return [value]
    items = list(value)
    if not items or all(isinstance(v, (list, tuple)) for v in items):
        return items
    if all(is_video_file(v) for v in items):
        return items
    return [items]


def video_frame_refs(ref: Any) -> list[Any] | None:
    """The frame references of a frame-list video, or None for a video file."""
    if isinstance(ref, (list, tuple)):
        return list(ref)
    return None


@dataclass(frozen=True)
class FrameTimes:
    """When a video's sampled frames were taken: frame `indices[i]` of a source of `total` frames at `fps`
    frames per second (a frame list counts as a clip at data.video_fps). The processor gets this as video
    metadata; without it transformers assumes 24 fps (Qwen2.5-VL's temporal positions, Qwen3-VL's and
    SmolVLM's timestamps and Qwen3-VL's own frame sampling all read it). Padding frames are not listed."""

    fps: float
    total: int
    indices: tuple[int, ...]


def pad_frames(frames: list[Any], multiple: int) -> list[Any]:
    """`frames` with the last one repeated up to a multiple of `multiple` (a processor's temporal patch size:
    Qwen3-VL rejects a one-frame video; Qwen2-VL pads the same way itself)."""
    if multiple > 1 and frames and len(frames) % multiple:
        frames = frames + [frames[-1]] * (multiple - len(frames) % multiple)
    return frames


def sample_video(ref: Any, base_dir: Path | None, max_frames: int, fps: float = 2.0,
                 temporal_patch: int = 1) -> tuple[list[Image.Image], FrameTimes]:
    """Frames of a video and when they were taken: a list of frame references (sampled down to `max_frames`)
    or a video file (sampled at `fps`, then down to `max_frames`); padded to a multiple of `temporal_patch`."""
    frames = video_frame_refs(ref)
    if frames is not None:
        if not frames:
            raise MediaError("video has no frames")
        picked = sample_indices(len(frames), max_frames)
        loaded = [load_image(frames[i], base_dir) for i in picked]
        return pad_frames(loaded, temporal_patch), FrameTimes(fps, len(frames), tuple(picked))
    path = resolve_path(ref.get("path") if isinstance(ref, dict) else str(ref), base_dir)

    def pick(total: int, native_fps: float) -> list[int]:
        wanted = total
        if native_fps > 0 and fps > 0:  # frames the clip has at the requested rate
            wanted = max(1, round(total / native_fps * fps))
        return sample_indices(total, min(wanted, max_frames))

    frames, total, native_fps = decode_video_file(path, pick)
    if not frames:
        raise MediaError(f"video {str(path)!r} has no frames")
    # A file without a frame rate: its frames count as sampled at `fps`.
    times = FrameTimes(native_fps if native_fps > 0 else fps, total, tuple(pick(total, native_fps)))
    return pad_frames(frames, temporal_patch), times


def load_video(ref: Any, base_dir: Path | None, max_frames: int, fps: float = 2.0,
               temporal_patch: int = 1) -> list[Image.Image]:
    """The frames of `sample_video`."""
    return sample_video(ref, base_dir, max_frames, fps, temporal_patch)[0]


def video_shape(ref: Any, base_dir: Path | None, max_frames: int, fps: float = 2.0,
                temporal_patch: int = 1) -> tuple[int, tuple[int, int], FrameTimes]:
    """(frame count after sampling and padding, (width, height), FrameTimes) of a video, as `sample_video`
    gives them; frame lists are read from headers only, video files are decoded."""
    frames = video_frame_refs(ref)
    if frames is not None:
        if not frames:
            raise MediaError("video has no frames")
        for f in frames:
            check_image_ref(f, base_dir)
        picked = sample_indices(len(frames), max_frames)
        n = len(pad_frames(picked, temporal_patch))
        return n, image_size(frames[0], base_dir), FrameTimes(fps, len(frames), tuple(picked))
    loaded, times = sample_video(ref, base_dir, max_frames, fps, temporal_patch)
    return len(loaded), loaded[0].size, times
