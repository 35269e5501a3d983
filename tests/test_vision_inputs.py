"""Images and videos as the model should see them: transparency, bit depth, EXIF orientation, video frame rate
and one-frame videos, and image references that must still load from a prompt's meta."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rllava.config import DataConfig
from rllava.data.dataset import RLDataset
from rllava.data.rows import DataError
from rllava.data.vision import image_size, load_image


def _png_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def processors(tiny_model_factory):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = AutoProcessor.from_pretrained(tiny_model_factory(family))
        return cache[family]

    return get


# ------------------------------------------------------------------ images


def test_transparent_pixels_become_white_not_black():
    """Black content on a transparent background must stay visible: transparency is composited over white."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent, stored colour black
    rgba.putpixel((4, 4), (0, 0, 0, 255))  # opaque black
    rgba.putpixel((5, 5), (0, 0, 0, 128))  # half-transparent black
    for name, raw in [("RGBA", _png_bytes(rgba)), ("P with tRNS", _png_bytes(rgba.convert("P"))),
                      ("LA", _png_bytes(rgba.convert("LA")))]:
        img = load_image(raw)
        assert img.mode == "RGB", name
        assert img.getpixel((0, 0)) == (255, 255, 255), name
        assert img.getpixel((4, 4)) == (0, 0, 0), name
        if name != "P with tRNS":  # a palette has no partial alpha here
            assert all(120 <= c <= 135 for c in img.getpixel((5, 5))), name
    # A colour-keyed RGB PNG (tRNS naming one colour transparent) and a PIL image handed over in memory.
    keyed = Image.new("RGB", (4, 4), (0, 0, 0))
    keyed.putpixel((1, 1), (255, 0, 0))
    img = load_image(_png_bytes(keyed, transparency=(0, 0, 0)))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (255, 0, 0)
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(rgba.quantize()).getpixel((0, 0)) == (255, 255, 255)  # a palette with alpha, in memory


def test_16_bit_and_float_images_keep_their_grey_levels():
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    raw = _png_bytes(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(raw)).mode.startswith("I;16")
    for ref in (raw, Image.fromarray(ramp)):
        out = np.asarray(load_image(ref))
        # 16-bit levels map onto 8 bits by /257: 0 -> 0, 65535 -> 255, every level in between kept in order.
        assert np.array_equal(out[..., 0], np.rint(ramp / 257).astype(np.uint8))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # 32-bit int and float images have no fixed range: their maximum becomes white.
    ints = Image.fromarray(np.array([[0, 500], [1000, 2000]], dtype=np.int32))
    floats = Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32))
    assert ints.mode == "I" and floats.mode == "F"
    for img in (ints, floats):
        assert np.asarray(load_image(img))[..., 0].tolist() == [[0, 64], [128, 255]]


def _rotated_jpeg(orientation: int, size=(40, 20)) -> bytes:
    """A landscape JPEG, left half red and right half blue, tagged with an EXIF orientation."""
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_exif_orientation_is_applied_and_image_size_agrees():
    # Orientation 6: rotate 90 degrees clockwise to view, so the stored right (blue) half shows at the bottom.
    raw = _rotated_jpeg(6)
    img = load_image(raw)
    assert img.size == (20, 40) == image_size(raw, None)
    r, _, b = img.getpixel((10, 5))
    assert r > 200 and b < 60  # top: red
    r, _, b = img.getpixel((10, 35))
    assert b > 200 and r < 60  # bottom: blue
    assert load_image(Image.open(io.BytesIO(raw))).size == (20, 40) == image_size(Image.open(io.BytesIO(raw)), None)
    for orientation, size in [(1, (40, 20)), (3, (40, 20)), (5, (20, 40)), (8, (20, 40))]:
        raw = _rotated_jpeg(orientation)
        assert load_image(raw).size == size == image_size(raw, None), orientation
    # A PNG with EXIF in its header: image_size reads it without decoding the pixels.
    tagged = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 8
    raw = _png_bytes(tagged, exif=exif.tobytes())
    assert load_image(raw).size == (20, 40) == image_size(raw, None)


def test_an_upright_image_loads_again_unchanged():
    # load_image applies the orientation to the pixels, so it drops the tag: a second load must not turn it again.
    raw = _rotated_jpeg(6)
    once = load_image(raw)
    twice = load_image(once)
    assert twice.size == once.size == (20, 40) == image_size(once, None)
    assert np.array_equal(np.asarray(twice), np.asarray(once))
    assert Image.Image.getexif(once).get(0x0112) is None
    # An orientation stored in XMP (read when the EXIF has none) is dropped too; the caller's image keeps its own.
    tagged = Image.new("RGB", (40, 20))
    tagged.info["xmp"] = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    once = load_image(tagged)
    assert once.size == load_image(once).size == load_image(once.copy()).size == (20, 40)
    assert "xmp" in tagged.info


def test_a_rotated_photo_reaches_the_prompt_upright(tmp_path, processors):
    (tmp_path / "photo.jpg").write_bytes(_rotated_jpeg(6, (200, 90)))
    f = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "<image>Where?", "answer": "1", "images": ["photo.jpg"]}])
    ds = RLDataset(str(f), DataConfig(), processors("qwen2_vl"))
    p = ds[0]
    assert p.meta["image_sizes"] == [[90, 200]] and p.images[0].height > p.images[0].width
    assert ds.items[0].length == len(p.input_ids)


def test_an_hf_datasets_image_dict_keeps_a_loadable_path_in_meta(tmp_path, processors, monkeypatch):
    """Multi-turn tools reload the original images from meta, without the row's folder."""
    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGB", (30, 20), (0, 255, 0)).save(tmp_path / "data" / "images" / "a.png")
    f = _jsonl(tmp_path / "data" / "rows.jsonl", [{"prompt": "<image>Count.", "answer": "1",
                                                   "images": [{"bytes": None, "path": "images/a.png"}]}])
    monkeypatch.chdir(tmp_path)  # the relative path does not resolve from here
    ds = RLDataset(str(f), DataConfig(), processors("qwen2_vl"))
    for meta in (ds[0].meta, ds.meta(0)):
        (ref,) = meta["images"]
        assert ref == {"bytes": None, "path": str(tmp_path / "data" / "images" / "a.png")}
        assert load_image(ref).getpixel((0, 0)) == (0, 255, 0)  # what rllava/roles/multiturn.py does


# ------------------------------------------------------------------ videos


def _frames(tmp_path, n, size=(56, 56)):
    names = []
    for i in range(n):
        Image.new("RGB", size, (20 * i, 0, 0)).save(tmp_path / f"f{i}.png")
        names.append(f"f{i}.png")
    return names


def _video_dataset(tmp_path, processor, n_frames, **cfg):
    f = _jsonl(tmp_path / "v.jsonl", [{"prompt": "<video>What moves?", "answer": "x",
                                       "videos": [_frames(tmp_path, n_frames)]}])
    return RLDataset(str(f), DataConfig(**cfg), processor)


def test_qwen2_5_vl_temporal_positions_follow_the_sampling_rate(tmp_path, processors):
    """second_per_grid_ts is the seconds one temporal patch (temporal_patch_size=2 frames) spans. 8 frames kept
    of 8 at data.video_fps=4: one frame per 0.25 s, so 2 frames = 0.5 s. Without the metadata transformers
    assumes 24 fps and gives 2/24 = 0.083. 8 frames thinned to 4 (frames 1, 3, 5, 7) at 2 fps: one frame per
    1 s, so 2 s per patch."""
    processor = processors("qwen2_5_vl")
    ds = _video_dataset(tmp_path, processor, 8, video_fps=4.0)
    p = ds[0]
    assert int(p.mm["video_grid_thw"][0, 0]) == 4  # temporal patches
    assert p.mm["second_per_grid_ts"].tolist() == pytest.approx([0.5])
    assert ds.items[0].length == len(p.input_ids)
    ds = _video_dataset(tmp_path, processor, 8, video_fps=2.0, max_frames=4)
    p = ds[0]
    assert int(p.mm["video_grid_thw"][0, 0]) == 2
    assert p.mm["second_per_grid_ts"].tolist() == pytest.approx([2.0])
    assert ds.items[0].length == len(p.input_ids)


def test_qwen3_vl_keeps_every_sampled_frame_and_their_timestamps(tmp_path, processors):
    """Qwen3-VL resamples videos itself unless told not to (it dropped half of 8 frames at an assumed 24 fps)
    and writes each temporal patch's time into the prompt: frames i at i/2 s, patch (6, 7) at 3.25 s."""
    processor = processors("qwen3_vl")
    ds = _video_dataset(tmp_path, processor, 8, video_fps=2.0)
    p = ds[0]
    assert int(p.mm["video_grid_thw"][0, 0]) == 4  # 8 frames / temporal patch 2
    text = processor.tokenizer.decode(p.input_ids)
    assert [s.split(" seconds")[0] for s in text.split("<") if " seconds>" in s] == ["0.2", "1.2", "2.2", "3.2"]
    assert ds.items[0].length == len(p.input_ids)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "internvl"])
def test_one_frame_and_odd_frame_videos_load_and_estimate_exactly(tmp_path, processors, tiny_model_factory, family):
    """Qwen3-VL rejected a one-frame video (t:1 must be larger than temporal_factor:2); Qwen-VL videos are
    padded with the last frame to whole temporal patches, other families get their frames as sampled."""
    processor = processors(family)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_factory(family))
    pad = 2 if family.startswith("qwen") else 1
    for n_frames, max_frames, kept in [(1, 8, 1), (4, 1, 1), (3, 8, 3)]:
        ds = _video_dataset(tmp_path, processor, n_frames, max_frames=max_frames)
        p = ds[0]
        assert ds.items[0].length == len(p.input_ids), (n_frames, max_frames)
        _, (frames,) = ds.load_media(0)
        assert len(frames) == -(-kept // pad) * pad and frames[-1].tobytes() == frames[kept - 1].tobytes()
        ids = torch.tensor([p.input_ids])
        seq = {k: torch.tensor([v]) for k, v in p.seq.items()}
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **p.mm, **seq).logits
        assert logits.shape[1] == len(p.input_ids) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_an_image_and_a_video_in_one_prompt(tmp_path, processors, family):
    """SmolVLM returns images and video frames both as pixel_values: a row with both kept only the frames, and
    the rollout failed on the images' tokens mid-run. It is a bad row at load time; Qwen-VL keeps both."""
    Image.new("RGB", (56, 84), (0, 90, 0)).save(tmp_path / "i.png")
    f = _jsonl(tmp_path / "iv.jsonl", [{"prompt": "<image> then <video>: what moves?", "answer": "x",
                                        "images": ["i.png"], "videos": [_frames(tmp_path, 2)]}])
    if family == "smolvlm":
        with pytest.raises(DataError, match=r"iv\.jsonl, row 0, field .videos.: SmolVLMProcessor.*cannot take images and videos"):
            RLDataset(str(f), DataConfig(), processors(family))
    else:
        p = RLDataset(str(f), DataConfig(), processors(family))[0]
        assert {"pixel_values", "pixel_values_videos"} <= set(p.mm)
