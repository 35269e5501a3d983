"""The built-in tools, called directly: zoom (crop geometry and pixels), search (BM25), python (sandboxed)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from rllava.envs import TOOLS, SandboxLimits, ToolContext, ToolError, ToolSettings
from rllava.envs.search_tool import BM25, Passage, corpus_index, load_corpus

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (250, 250, 250)


def quadrants(w: int = 100, h: int = 80) -> Image.Image:
    """Top-left red, top-right blue, bottom-left green, bottom-right white (split at w/2, h/2)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2:] = RED, BLUE
    a[h // 2:, : w // 2], a[h // 2:, w // 2:] = GREEN, WHITE
    return Image.fromarray(a)


def zoom(args: dict, images: list, meta: dict | None = None, **settings) -> tuple:
    obs = TOOLS.get("zoom")(args, ToolContext(images=images, sample_meta=meta or {}, settings=ToolSettings(**settings)))
    return obs, np.asarray(obs.images[0])


# ---- zoom


def test_zoom_one_quadrant_is_uniform_and_scaled_to_the_longer_side():
    obs, px = zoom({"bbox": [50, 0, 100, 40]}, [quadrants()])
    assert obs.images[0].size == (224, 179)  # 50 x 40 scaled by 224/50: 40 * 4.48 = 179.2
    assert (px == BLUE).all()
    assert "[50, 0, 100, 40]" in obs.text and obs.role == "tool"


def test_zoom_across_the_border_keeps_left_and_right_colours():
    _, px = zoom({"bbox": [40, 10, 60, 30]}, [quadrants()])  # 20 x 20, red | blue at the middle
    assert px.shape == (224, 224, 3)
    assert tuple(px[112, 5]) == RED and tuple(px[112, 218]) == BLUE
    assert tuple(px[5, 100]) == RED and tuple(px[5, 124]) == BLUE


def test_zoom_clips_fractional_and_out_of_image_boxes():
    obs, px = zoom({"bbox": [-10, -5, 30.5, 20.2]}, [quadrants()])
    assert "[0, 0, 31, 21]" in obs.text  # floor of the start, ceil of the end, clipped to the image
    assert obs.images[0].size == (224, round(21 * 224 / 31))
    assert (px == RED).all()


def test_zoom_custom_size_and_minimum_side():
    obs, _ = zoom({"bbox": [0, 0, 100, 1]}, [quadrants()], zoom_size=112, zoom_min_side=28)
    assert obs.images[0].size == (112, 28)  # a 100 x 1 strip would be 112 x 1: the short side is raised


def test_zoom_uses_the_requested_image():
    second = Image.new("RGB", (30, 30), GREEN)
    _, px = zoom({"image_index": 1, "bbox": [0, 0, 10, 10]}, [quadrants(), second])
    assert (px == GREEN).all()


@pytest.mark.parametrize("args, message", [
    ({"bbox": [10, 10, 10, 20]}, "is empty"),
    ({"bbox": [200, 200, 300, 300]}, "lies outside the image (100 x 80 pixels)"),
    ({"bbox": [0, 0, 10]}, "bbox must be a list of 4 numbers"),
    ({"bbox": [0, 0, "10", 10]}, "bbox must be a list of 4 numbers"),
    ({"bbox": "0,0,10,10"}, "argument 'bbox' must be of type array, got string"),
    ({"bbox": [0, 0, 10, 10], "image_index": 3}, "image_index 3 is out of range; there are 1 image(s)"),
    ({"bbox": [0, 0, 10, 10], "image_index": True}, "must be of type integer, got boolean"),
    ({"box": [0, 0, 10, 10]}, "unknown argument(s) ['box']"),
    ({}, "missing required argument 'bbox'"),
])
def test_zoom_rejects_bad_arguments_with_a_clear_message(args, message):
    with pytest.raises(ToolError) as e:
        zoom(args, [quadrants()])
    assert message in str(e.value)


@pytest.mark.parametrize("args", [
    {"bbox": list(range(20000))},  # a repetition loop: 20000 numbers
    {"bbox": [10**300, 0, 10**300 + 1, 10**300]},  # huge but valid JSON integers
    {"bbox": [0, 0, 10, 10], **{f"extra_{i}": i for i in range(5000)}},
])
def test_zoom_errors_repeat_only_a_short_piece_of_the_models_input(args):
    with pytest.raises(ToolError) as e:
        zoom(args, [quadrants()])
    assert len(str(e.value)) < 300, str(e.value)[:400]


def test_zoom_without_images():
    with pytest.raises(ToolError, match="no images"):
        zoom({"bbox": [0, 0, 1, 1]}, [])


# The quadrants image is the 100 x 80 original; the model was shown it at 50 x 40 (the row's input_image_sizes).
SHOWN = {"image_sizes": [[100, 80]], "input_image_sizes": [[50, 40]]}


@pytest.mark.parametrize("frame, bbox, told", [
    ("input", [25, 0, 50, 20], "[25, 0, 50, 20]"),  # x2 to reach the original's pixels [50, 0, 100, 40]
    ("norm1000", [500, 0, 1000, 500], "[500, 0, 1000, 500]"),
    ("norm1", [0.5, 0, 1, 0.5], "[0.5, 0, 1, 0.5]"),
])
def test_zoom_reads_the_box_in_the_configured_frame(frame, bbox, told):
    """The same region (the blue quadrant, [50, 0, 100, 40] in the original's pixels) in each frame crops the same
    pixels as the pixel box; the text tells the region back in the model's frame."""
    expected, _ = zoom({"bbox": [50, 0, 100, 40]}, [quadrants()], SHOWN)
    obs, px = zoom({"bbox": bbox}, [quadrants()], SHOWN, zoom_box_frame=frame)
    assert (px == BLUE).all() and np.array_equal(px, np.asarray(expected.images[0]))
    assert obs.text.startswith(f"Zoomed into {told} of image 0;")


def test_zoom_input_frame_rounds_outwards_and_clips_in_original_pixels():
    # [10.3, 5, 30, 25.5] of the 50 x 40 view = [20.6, 10, 60, 51] of the original -> pixels [20, 10, 60, 51]
    obs, _ = zoom({"bbox": [10.3, 5, 30, 25.5]}, [quadrants()], SHOWN, zoom_box_frame="input")
    assert obs.images[0].size == (round(40 * 224 / 41), 224)  # a 40 x 41 crop, its longer side scaled to 224
    assert "Zoomed into [10, 5, 30, 25.5]" in obs.text  # the cropped pixels, in the 50 x 40 view
    obs, px = zoom({"bbox": [-5, -5, 10, 10]}, [quadrants()], SHOWN, zoom_box_frame="input")
    assert "[0, 0, 10, 10]" in obs.text and obs.images[0].size == (224, 224) and (px == RED).all()
    with pytest.raises(ToolError, match=r"lies outside the image \(50 x 40 pixels\)"):
        zoom({"bbox": [60, 0, 70, 10]}, [quadrants()], SHOWN, zoom_box_frame="input")
    with pytest.raises(ToolError, match=r"lies outside the image \(1000 x 1000 norm1000\)"):
        zoom({"bbox": [1000, 0, 1100, 10]}, [quadrants()], SHOWN, zoom_box_frame="norm1000")


def test_zoom_input_frame_on_a_tool_image_reads_it_as_returned():
    # image 1 came from a tool: no recorded size, so the model saw it as it is (30 x 30)
    second = Image.new("RGB", (30, 30), GREEN)
    second.paste(RED, (0, 0, 15, 30))
    _, px = zoom({"image_index": 1, "bbox": [15, 0, 30, 30]}, [quadrants(), second], SHOWN, zoom_box_frame="input")
    assert (px == GREEN).all()
    _, px = zoom({"image_index": 1, "bbox": [0.5, 0, 1, 1]}, [quadrants(), second], SHOWN, zoom_box_frame="norm1")
    assert (px == GREEN).all()


def test_zoom_input_frame_needs_the_rows_shown_sizes():
    with pytest.raises(ValueError, match="env.zoom_box_frame=input needs the row's input_image_sizes"):
        zoom({"bbox": [0, 0, 10, 10]}, [quadrants()], {"image_sizes": [[100, 80]]}, zoom_box_frame="input")
    with pytest.raises(ValueError, match=r"env.zoom_box_frame='norm100' is not one of"):
        zoom({"bbox": [0, 0, 10, 10]}, [quadrants()], SHOWN, zoom_box_frame="norm100")


@pytest.mark.parametrize("frame", ["pixels", "input", "norm1000", "norm1"])
def test_zoom_frames_are_the_box_rewards_frames(frame):
    """The zoom tool and the box rewards read a box the same way (envs/ cannot import rewards/, so both keep
    the frames; this keeps them equal)."""
    from rllava.envs.zoom_tool import ZOOM_BOX_FRAMES, frame_size
    from rllava.rewards.boxes import BOX_FRAMES, to_image_pixels

    assert ZOOM_BOX_FRAMES == BOX_FRAMES
    meta = {"image_sizes": [[638, 853]], "input_image_sizes": [[392, 504]]}
    fw, fh = frame_size(frame, 0, Image.new("RGB", (638, 853)), meta)
    box = (0.1 * fw, 0.25 * fh, 0.35 * fw, 0.5 * fh)
    assert to_image_pixels([box], frame, meta)[0] == pytest.approx((63.8, 213.25, 223.3, 426.5))


# ---- search

# Hand-computable: N = 3, lengths 3, 4, 2, average 3, k1 = 1.5, b = 0.75.
LINES = ["cat sat mat", "dog chased cat cat", "bird sang"]


def test_bm25_scores_match_hand_computation():
    index = BM25([Passage(str(i), "", t) for i, t in enumerate(LINES)])
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # df(cat) = 2
    idf_bird = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # df(bird) = 1
    # doc 0: tf 1, length 3 -> norm = 1.5 * (0.25 + 0.75 * 3/3) = 1.5; tf part = 1 * 2.5 / (1 + 1.5) = 1
    # doc 1: tf 2, length 4 -> norm = 1.5 * (0.25 + 0.75 * 4/3) = 1.875; tf part = 2 * 2.5 / 3.875
    # doc 2: tf 1, length 2 -> norm = 1.5 * (0.25 + 0.75 * 2/3) = 1.125; tf part = 2.5 / 2.125
    scores = index.scores("Cat, bird?")
    assert scores[0] == pytest.approx(idf_cat * 1.0)
    assert scores[1] == pytest.approx(idf_cat * 5 / 3.875)
    assert scores[2] == pytest.approx(idf_bird * 2.5 / 2.125)
    assert [i for i, _ in index.search("cat bird", 3)] == [2, 1, 0]
    assert [i for i, _ in index.search("cat", 5)] == [1, 0]  # the bird passage shares no term
    assert index.search("unicorn", 3) == []


def test_search_tool_over_a_jsonl_corpus(tmp_path):
    corpus = tmp_path / "wiki.jsonl"
    rows = [{"id": "a1", "title": "Paris", "text": "Paris is the capital of France."},
            {"id": "b2", "title": "Berlin", "text": "Berlin is the capital of Germany. " * 20},
            {"id": "c3", "title": "Rivers", "text": "The Seine flows through Paris."}]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ctx = ToolContext(settings=ToolSettings(corpus_path=str(corpus), search_passage_chars=40))
    obs = TOOLS.get("search")({"query": "capital of France", "k": 2}, ctx)
    blocks = obs.text.split("\n\n")
    assert len(blocks) == 2
    assert blocks[0] == "[1] (id a1) Paris\nParis is the capital of France."
    assert blocks[1].startswith("[2] (id b2) Berlin\n") and blocks[1].endswith("...")  # cut to 40 characters
    assert len(blocks[1].split("\n")[1]) == 43
    assert "No passage matches" in TOOLS.get("search")({"query": "volcano"}, ctx).text
    assert corpus_index(corpus) is corpus_index(corpus)  # built once, shared


def test_search_plain_text_corpus_and_k_is_capped(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(f"passage {i} about cats" for i in range(20)))
    ctx = ToolContext(settings=ToolSettings(corpus_path=str(corpus), search_max_k=4))
    obs = TOOLS.get("search")({"query": "cats", "k": 50}, ctx)
    assert obs.text.count("(id ") == 4
    assert obs.text.startswith("[1] (id 0)\npassage 0 about cats")  # equal scores keep corpus order


def test_search_errors_name_the_problem(tmp_path):
    with pytest.raises(ToolError, match="no corpus is configured"):
        TOOLS.get("search")({"query": "x"}, ToolContext())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each row needs a string field 'text'"):
        load_corpus(bad)
    bad.write_text('{"id": 1, "text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_corpus(bad)


def test_corpus_lines_end_at_newlines_only_and_null_fields_are_absent(tmp_path):
    """U+2028 (written as is by json.dumps(ensure_ascii=False)) and form feeds are not line ends; a null id or title
    is absent, not the text "None" (which a query for "none" would match); a byte-order mark is skipped."""
    import json

    rows = [{"id": "a", "title": "T", "text": "one\u2028line"}, {"id": None, "title": None, "text": "The flag is red."}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    assert load_corpus(corpus) == [Passage("a", "T", "one\u2028line"), Passage("1", "", "The flag is red.")]
    text = tmp_path / "c.txt"
    text.write_text("first passage with a form\x0cfeed\nsecond passage\n")
    assert [p.text for p in load_corpus(text)] == ["first passage with a form\x0cfeed", "second passage"]


# ---- python


def test_python_tool_sees_the_images_and_keeps_files_between_calls():
    limits = SandboxLimits(timeout_s=5.0, memory_mb=512)
    ctx = ToolContext(images=[quadrants()], settings=ToolSettings(python=limits))
    try:
        run = TOOLS.get("python")
        first = run({"code": "from PIL import Image\nim = Image.open('image_0.png')\nprint(im.size, im.getpixel((75, 60)))\n"
                             "open('note.txt', 'w').write('kept')"}, ctx)
        assert first.text == "exit status: 0\nstdout:\n(100, 80) (250, 250, 250)"
        second = run({"code": "print(open('note.txt').read())"}, ctx)
        assert second.text.endswith("stdout:\nkept")
        folder = ctx.work_dir
    finally:
        ctx.cleanup()
    assert not folder.exists()


def test_python_tool_does_not_follow_a_link_planted_in_its_folder(tmp_path):
    """Code plants image_1.png -> outside; exporting the next image must replace the link, not write through it."""
    target = tmp_path / "planted.txt"
    ctx = ToolContext(images=[quadrants()], settings=ToolSettings(python=SandboxLimits(timeout_s=5.0)))
    try:
        run = TOOLS.get("python")
        out = run({"code": f"import os\nos.symlink({str(target)!r}, 'image_1.png')\nprint('planted')"}, ctx)
        assert out.text.endswith("planted")
        ctx.images.append(Image.new("RGB", (8, 8), GREEN))
        out = run({"code": "import os\nfrom PIL import Image\nprint(os.path.islink('image_1.png'), "
                           "Image.open('image_1.png').size)"}, ctx)
        assert out.text.endswith("False (8, 8)")
        assert not target.exists()
    finally:
        ctx.cleanup()


def test_only_calls_that_ran_count_as_tool_calls(tmp_path):
    """agent/tool_calls counts calls that ran and returned: not one that failed (no corpus here) nor one skipped
    because the turns ran out."""
    from rllava.envs.tool_env import ToolEnv
    from rllava.roles.multiturn import ran_a_tool

    corpus = tmp_path / "c.txt"
    corpus.write_text("The flag of Velmora is red.\n")
    counts = []
    for settings in (ToolSettings(), ToolSettings(corpus_path=str(corpus))):
        env = ToolEnv(tools=["search"], call_format="tags", max_turns=2, settings=settings)
        env.reset({}, [])
        counts.append([ran_a_tool(env.step("<search>velmora flag</search>").info) for _ in range(2)])
    assert counts == [[False, False], [True, False]]  # failed, failed | ran, skipped on the last turn
