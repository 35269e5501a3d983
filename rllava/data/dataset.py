"""`RLDataset`: rows -> processed `Prompt`s (template, chat template, images, processor outputs).

Construction reads every row, checks the cheap things (keys, types, that image files exist),
renders its prompt text and estimates its token length; rows over `max_prompt_length` are
dropped and counted. Images are decoded only in `__getitem__`.

Length estimate: the rendered chat text is tokenised, and each image adds the number of tokens
the processor expands its placeholder into. That number depends only on the (resized) image
size, so it is measured once per distinct size by processing a blank image of that size. It
matches the processed length exactly for placeholder-expanding processors (Qwen-VL, LLaVA,
Idefics3/SmolVLM, Gemma3); a prompt that still comes out too long is logged at access time. If a
processor rejects the blank probe, each row with media is processed once instead (exact, slower). A row the
processor rejects itself (an extreme aspect ratio, video frames of different sizes) is a bad row (`DataError`).

Videos reach the processor as frames rllava sampled, with video metadata (`FrameTimes`: the sampling rate and
frame times) and the processor's own frame sampling off, padded to its temporal patch size; the blank probe of
a video gets the same metadata, since Qwen3-VL and SmolVLM write frame timestamps into the prompt.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rllava.config import DataConfig
from rllava.data.loader import PromptLoader  # noqa: F401  (re-exported: `from rllava.data.dataset import PromptLoader`)
from rllava.data.rows import DataError, RowRef, load_rows, load_rows_with_refs, split_suffix  # noqa: F401
from rllava.data.template import (
    PromptTemplate,
    RowTemplate,
    TemplateError,
    apply_chat_template,
    build_messages,
    conversation_messages,
    is_conversation,
    read_chat_template,
)
from rllava.data.types import Prompt
from rllava.data.vision import (
    FrameTimes,
    MediaError,
    check_image_ref,
    fit_pixels,
    image_size,
    load_image,
    normalize_videos,
    resize_image,
    resolve_path,
    sample_video,
    video_shape,
)

logger = logging.getLogger(__name__)

# Processor outputs that are per-token and aligned with input_ids (they go to Prompt.seq, not Prompt.mm).
SEQ_KEYS = ("mm_token_type_ids", "token_type_ids")
NOT_MM = ("input_ids", "attention_mask")


@dataclass
class _Item:
    """A validated row, ready to process: its chat text and media references."""

    row: dict[str, Any]
    ref: RowRef
    text: str
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    length: int = 0  # estimated prompt tokens
    image_sizes: list[list[int]] = field(default_factory=list)  # [width, height] of each image before resizing
    video_times: list[FrameTimes] = field(default_factory=list)  # of each video's sampled frames, once loaded
    query: str = ""  # the rendered user message, before the chat template
    answer: str | None = None  # the ground truth rewards get (data.answer_template or the answer_key field)


def _no_media(value: Any) -> bool:
    """A media field that holds nothing: null, or blank text (how a CSV, or a table exported from one, writes a
    text-only row's missing image path)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _as_list(value: Any) -> list[Any]:
    if _no_media(value):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _answer_text(value: Any) -> str:
    """The ground truth as the string rewards receive (lists and dicts as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def is_multimodal(processor: Any) -> bool:
    """True for a VLM processor, False for a plain tokenizer."""
    return hasattr(processor, "image_processor") or hasattr(processor, "video_processor")


def _takes_video_metadata(processor: Any) -> bool:
    """Whether the processor's video processor takes `video_metadata` and `do_sample_frames` (transformers'
    video processors do; a custom or older one may not, and then gets the frames alone)."""
    kwargs = getattr(getattr(getattr(processor, "video_processor", None), "valid_kwargs", None), "__annotations__", {})
    return {"video_metadata", "do_sample_frames"} <= set(kwargs)


def _media_outputs_collide(processor: Any) -> bool:
    """Whether the processor returns images and videos under the same names (SmolVLM's `pixel_values`), so that
    one prompt holding both keeps only the videos' features."""
    image, video = getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)
    if image is None or video is None:
        return False
    return bool(set(getattr(image, "model_input_names", ())) & set(getattr(video, "model_input_names", ())))


def _video_kwargs(processor: Any, times: list[FrameTimes]) -> dict[str, Any]:
    """Processor arguments for videos of these frame times: their metadata, and no resampling of the frames
    rllava already sampled (Qwen3-VL would otherwise resample them as if they were a 24 fps clip)."""
    if not times or not _takes_video_metadata(processor) or any(t.fps <= 0 for t in times):
        return {}
    from transformers.video_utils import VideoMetadata

    metadata = [VideoMetadata(total_num_frames=t.total, fps=t.fps, frames_indices=list(t.indices),
                              duration=t.total / t.fps) for t in times]
    return {"video_metadata": metadata, "do_sample_frames": False}


SPLIT_NAMES = ("train", "val", "validation", "test", "dev")


def data_source(file: str) -> str:
    """A short name for the dataset a file belongs to: `counting/val.parquet` -> counting, `gsm8k.jsonl` -> gsm8k,
    `hiyouga/geometry3k@test` -> geometry3k, and a config folder of a downloaded repo (its dataset card one
    folder up) `/data/gsm8k/main@test` -> gsm8k."""
    name, split = split_suffix(file)
    if split is not None and not Path(name).expanduser().is_file():
        folder = Path(name).expanduser()
        if folder.is_dir() and not (folder / "README.md").exists() and (folder.parent / "README.md").exists():
            return folder.resolve().parent.name
        return folder.name
    p = Path(name)
    return p.parent.name if p.stem in SPLIT_NAMES and p.parent.name else p.stem


def _absolute(ref: Any, base_dir: Path | None) -> Any:
    """An image reference with a relative path resolved against its row's folder (a path string, or the path
    of a `{"bytes": None, "path": ...}` dict), so that it loads again without the row (multi-turn tools reload
    the originals from meta); other references as they are."""
    if isinstance(ref, str):
        return str(resolve_path(ref, base_dir))
    if isinstance(ref, dict) and ref.get("bytes") is None and isinstance(ref.get("path"), str):
        return {**ref, "path": str(resolve_path(ref["path"], base_dir))}
    return ref


def _source(it: _Item) -> str:
    """A row's own `data_source` field wins (veRL's datasets carry one); else its file's name."""
    return str(it.row.get("data_source") or data_source(it.ref.file))


class RLDataset(torch.utils.data.Dataset):
    """Prompts for RL (and SFT): `ds[i]` is a processed `Prompt` whose meta holds the row and its answer."""

    def __init__(self, files: str, cfg: DataConfig, processor: Any):
        self.files = files
        self.cfg = cfg
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.multimodal = is_multimodal(processor)
        # Frames per temporal patch (Qwen-VL: 2): videos are padded to a multiple by repeating the last frame.
        self.temporal_patch = int(getattr(getattr(processor, "video_processor", None), "temporal_patch_size", 1) or 1)
        self.skip_bad_rows = cfg.skip_bad_rows
        self.template = PromptTemplate(cfg.template, cfg.prompt_key)
        self.answer_template = RowTemplate(cfg.answer_template, "data.answer_template") if cfg.answer_template else None
        self.chat_template = read_chat_template(cfg.chat_template) if cfg.chat_template else None
        self.n_bad = 0  # rows skipped as bad (construction and access time)
        self.n_too_long = 0  # rows dropped for exceeding max_prompt_length
        self.bad_rows: list[str] = []  # the reasons, first few
        self._extra_tokens: dict[tuple, int] = {}  # (kind, frames, w, h, frame times) -> tokens a media item adds
        self._warned_long = False
        self._probe_failed = False
        rows, refs = load_rows_with_refs(files, cfg)
        items = []
        for row, ref in zip(rows, refs):
            try:
                items.append(self._prepare(row, ref))
            except DataError as e:
                self._bad(e)
        self._set_lengths(items)
        self.items = [it for it in items if it.length <= cfg.max_prompt_length]
        self.n_too_long = len(items) - len(self.items)
        if self.n_too_long:
            logger.warning("%s: dropped %d of %d prompts longer than data.max_prompt_length=%d tokens",
                           files, self.n_too_long, len(items), cfg.max_prompt_length)
        if self.n_bad:
            logger.warning("%s: skipped %d bad row(s) (data.skip_bad_rows=true); first: %s", files, self.n_bad,
                           self.bad_rows[0])
        if not self.items:
            raise DataError(f"{files}: no usable prompts ({len(rows)} rows, {self.n_bad} bad, "
                            f"{self.n_too_long} longer than max_prompt_length={cfg.max_prompt_length})")

    # ------------------------------------------------------------------ construction

    def _bad(self, err: DataError) -> None:
        if not self.skip_bad_rows:
            raise DataError(f"{err} (data.skip_bad_rows=true drops such rows and counts them)") from None
        self.n_bad += 1
        if len(self.bad_rows) < 20:
            self.bad_rows.append(str(err))

    def _prepare(self, row: dict[str, Any], ref: RowRef) -> _Item:
        cfg = self.cfg
        if cfg.prompt_key not in row or row[cfg.prompt_key] is None:
            raise DataError(f"{ref.where(cfg.prompt_key)}: missing (row fields: {sorted(row)})")
        prompt = row[cfg.prompt_key]
        conversation = is_conversation(prompt)
        if not conversation and not isinstance(prompt, str):
            raise DataError(f"{ref.where(cfg.prompt_key)}: expected text or a list of chat messages, got "
                            f"{type(prompt).__name__}")
        if cfg.answer_key and self.answer_template is None:
            value = row.get(cfg.answer_key)
            if value is None:
                raise DataError(f"{ref.where(cfg.answer_key)}: missing (row fields: {sorted(row)}; "
                                "set data.answer_key, or '' for rows without answers)")
            if isinstance(value, float) and not math.isfinite(value):  # a missing value in a float column
                raise DataError(f"{ref.where(cfg.answer_key)}: missing ({value!r} is not an answer)")
        images = _as_list(row.get(cfg.image_key))
        videos = [] if _no_media(row.get(cfg.video_key)) else normalize_videos(row.get(cfg.video_key))
        if images and videos and _media_outputs_collide(self.processor):
            raise DataError(f"{ref.where(cfg.video_key)}: {type(self.processor).__name__} cannot take images and "
                            "videos in one prompt (its video frames replace the images' pixel_values)")
        for j, ref_j in enumerate(images):
            try:
                check_image_ref(ref_j, ref.base_dir)
            except MediaError as e:
                raise DataError(f"{ref.where(cfg.image_key)}: image {j}: {e}") from None
        def render(user_text: str) -> str:  # data.template, on the prompt text (a conversation's last user turn)
            try:
                return self.template.render({**row, cfg.prompt_key: user_text})
            except TemplateError as e:
                raise DataError(f"{ref.where('template')}: {e}") from None

        try:
            if conversation:
                messages, text = conversation_messages(prompt, len(images), len(videos), cfg.system_prompt,
                                                       self.multimodal, render if self.template.source else None)
            else:
                text = render(prompt)
                messages = build_messages(text, len(images), len(videos), cfg.system_prompt, self.multimodal)
            chat = apply_chat_template(self.processor, messages, self.chat_template)
        except TemplateError as e:
            raise DataError(f"{ref.where(cfg.prompt_key)}: {e}") from None
        return _Item(row, ref, chat, images, videos, query=text, answer=self._answer(row, ref))

    def _answer(self, row: dict[str, Any], ref: RowRef) -> str | None:
        if self.answer_template is not None:
            try:
                answer, where = self.answer_template.render(row).strip(), ref.where("answer_template")
            except TemplateError as e:
                raise DataError(f"{ref.where('answer_template')}: {e}") from None
        elif self.cfg.answer_key:
            answer, where = _answer_text(row[self.cfg.answer_key]), ref.where(self.cfg.answer_key)
        else:
            return None
        if not answer.strip():  # `math` and `exact_match` would score an empty \boxed{} as right
            raise DataError(f"{where}: the answer is empty (set data.answer_key='' for rows without answers)")
        return answer

    def _set_lengths(self, items: list[_Item]) -> None:
        """Estimated token length of every item (see the module docstring)."""
        texts = [it.text for it in items]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for it, tokens in zip(items, ids):
            it.length = len(tokens)
        for it in items:
            if not (it.images or it.videos):
                continue
            try:
                it.length += self._media_tokens(it)
            except DataError as e:  # an unreadable header: a bad row
                it.length = -1
                self._bad(e)
            except Exception as e:  # the processor rejected the blank probe: process the real row instead
                try:
                    it.length = len(self._encode(it, *self._load_media(it))["input_ids"][0])
                except DataError as bad:  # it rejects the row too (a 400:1 banner): the row is bad, not the probe
                    it.length = -1
                    self._bad(bad)
                    continue
                if not self._probe_failed:  # the real row passed where the probe failed: the probe is the problem
                    self._probe_failed = True
                    logger.warning("cannot estimate media tokens with a blank probe (%s: %s); processing each "
                                   "row once to measure its length", type(e).__name__, e)
        items[:] = [it for it in items if it.length >= 0]

    def _media_tokens(self, it: _Item) -> int:
        cfg = self.cfg
        total = 0
        for j, ref_j in enumerate(it.images):
            try:
                size = image_size(ref_j, it.ref.base_dir)
            except MediaError as e:
                raise DataError(f"{it.ref.where(cfg.image_key)}: image {j}: {e}") from None
            total += self._extra("image", 1, *fit_pixels(*size, cfg.min_pixels, cfg.max_pixels))
        for j, video in enumerate(it.videos):
            try:
                n, size, times = video_shape(video, it.ref.base_dir, cfg.max_frames, cfg.video_fps, self.temporal_patch)
            except MediaError as e:
                raise DataError(f"{it.ref.where(cfg.video_key)}: video {j}: {e}") from None
            total += self._extra("video", n, *fit_pixels(*size, cfg.min_pixels, cfg.max_pixels), times)
        return total

    def _extra(self, kind: str, frames: int, w: int, h: int, times: FrameTimes | None = None) -> int:
        """Tokens one image (or video of `frames` frames taken at `times`) of this size adds beyond its
        placeholder text."""
        key = (kind, frames, w, h, times)
        if key not in self._extra_tokens:
            probe = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "?"}]}]
            chat = apply_chat_template(self.processor, probe, self.chat_template)
            blank = Image.new("RGB", (w, h))
            if kind == "image":
                media = {"images": [blank]}
            else:
                media = {"videos": [[blank] * frames], **_video_kwargs(self.processor, [times] if times else [])}
            out = self.processor(text=[chat], return_tensors="pt", add_special_tokens=False, **media)
            plain = self.tokenizer(chat, add_special_tokens=False)["input_ids"]
            self._extra_tokens[key] = int(out["input_ids"].shape[1]) - len(plain)
        return self._extra_tokens[key]

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.items)

    def row(self, i: int) -> dict[str, Any]:
        """The raw row behind prompt i."""
        return self.items[i].row

    def where(self, i: int) -> str:
        """'file, row N' of prompt i, for messages."""
        return self.items[i].ref.where()

    def entries(self) -> list[int]:
        """Each prompt's comma-separated entry of the files setting (its source in a weighted mix)."""
        return [it.ref.entry for it in self.items]

    def sources(self) -> list[str]:
        """Each prompt's data source: its row's `data_source` field, else its file's (`data_source`)."""
        return [_source(it) for it in self.items]

    def meta(self, i: int) -> dict[str, Any]:
        """Prompt i's `Prompt.meta`, without loading its media."""
        return self._meta(self.items[i], i)

    def _meta(self, it: _Item, index: int) -> dict[str, Any]:
        """The row's fields for rewards and environments; relative media paths made absolute."""
        cfg = self.cfg
        meta = dict(it.row)
        if cfg.image_key in meta and it.images:
            meta[cfg.image_key] = [_absolute(x, it.ref.base_dir) for x in it.images]
        if it.answer is not None:
            meta["answer"] = it.answer
        meta["index"] = index
        meta["data_source"] = _source(it)
        return meta

    def _load_media(self, it: _Item) -> tuple[list[Image.Image], list[list[Image.Image]]]:
        cfg = self.cfg
        try:
            originals = [load_image(x, it.ref.base_dir) for x in it.images]
            it.image_sizes = [list(img.size) for img in originals]  # what box rewards map back to
            images = [resize_image(img, cfg.min_pixels, cfg.max_pixels) for img in originals]
        except MediaError as e:
            raise DataError(f"{it.ref.where(cfg.image_key)}: {e}") from None
        try:
            clips = [sample_video(v, it.ref.base_dir, cfg.max_frames, cfg.video_fps, self.temporal_patch)
                     for v in it.videos]
        except MediaError as e:
            raise DataError(f"{it.ref.where(cfg.video_key)}: {e}") from None
        it.video_times = [times for _, times in clips]  # the processor's video metadata (_encode)
        videos = [[resize_image(f, cfg.min_pixels, cfg.max_pixels) for f in frames] for frames, _ in clips]
        return images, videos

    def load_media(self, i: int) -> tuple[list[Image.Image], list[list[Image.Image]]]:
        """Decoded and resized images and video frames of prompt i."""
        return self._load_media(self.items[i])

    def _encode(self, it: _Item, images: list[Image.Image], videos: list[list[Image.Image]]) -> Any:
        """The processor's (or tokenizer's) outputs for one prompt, batch dim 1."""
        try:
            if not self.multimodal:
                return self.tokenizer(it.text, return_tensors="pt", add_special_tokens=False)
            media = {k: v for k, v in (("images", images), ("videos", videos)) if v}
            if videos:
                media.update(_video_kwargs(self.processor, it.video_times))
            return self.processor(text=[it.text], return_tensors="pt", add_special_tokens=False, **media)
        except Exception as e:  # noqa: BLE001
            # A row the processor rejects (a 300:1 banner, a video whose frames differ in size) is a bad row:
            # name it, and let data.skip_bad_rows drop it like any other.
            keys = [k for k, media in ((self.cfg.image_key, images), (self.cfg.video_key, videos)) if media]
            raise DataError(f"{it.ref.where(', '.join(keys) or self.cfg.prompt_key)}: the processor rejected this "
                            f"row: {type(e).__name__}: {e}") from None

    def __getitem__(self, i: int) -> Prompt:
        it = self.items[i]
        images, videos = self._load_media(it)
        out = self._encode(it, images, videos)
        input_ids = out["input_ids"][0].tolist()
        n = len(input_ids)
        seq, mm = {}, {}
        for key, value in out.items():
            if key in NOT_MM or not isinstance(value, torch.Tensor):
                continue
            if key in SEQ_KEYS and tuple(value.shape) == (1, n):
                seq[key] = value[0].tolist()
            else:
                mm[key] = value
        if n > self.cfg.max_prompt_length and not self._warned_long:
            self._warned_long = True
            logger.warning("%s: prompt has %d tokens, over max_prompt_length=%d (estimated %d at load time)",
                           it.ref.where(), n, self.cfg.max_prompt_length, it.length)
        meta = self._meta(it, i)
        if images:  # for rewards that map what the model writes about an image back to the image (box frames)
            meta["image_sizes"] = [list(size) for size in it.image_sizes]
            meta["input_image_sizes"] = self._input_sizes(images, out)
        return Prompt(input_ids=input_ids, mm=mm, seq=seq, text=it.text, images=images,
                      meta=meta, index=i, query=it.query, where=it.ref.where())

    def _input_sizes(self, images: list[Image.Image], out: Any) -> list[list[int]]:
        """[width, height] of each image as the model sees it: from the processor's patch grid where it has one
        (Qwen-VL resizes to whole patches), else the size rllava resized it to."""
        grid, patch = out.get("image_grid_thw"), getattr(getattr(self.processor, "image_processor", None), "patch_size", None)
        if grid is not None and isinstance(patch, int) and len(grid) == len(images):
            return [[int(w) * patch, int(h) * patch] for _, h, w in grid.tolist()]
        return [list(img.size) for img in images]
