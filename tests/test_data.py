"""Data loading, prompt rendering and processing with real tiny processors, and the prompt loader."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rllava.config import DataConfig
from rllava.data.dataset import DataError, PromptLoader, RLDataset, load_rows
from rllava.data.template import PromptTemplate, TemplateError, build_messages, content_parts
from rllava.data.types import Batch, Episode
from rllava.data.vision import fit_pixels, load_image, normalize_videos, resize_image, sample_indices
from rllava.models.tiny_families import FAMILIES
from rllava.tasks import make_task


@pytest.fixture(scope="module")
def qwen_vl(tiny_model_factory):  # here (path, processor): shadows conftest's processor-only fixture
    path = tiny_model_factory("qwen2_vl")
    return path, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=20, seed=0)


def _png(path, size=(40, 30), color=(255, 0, 0)):
    Image.new("RGB", size, color).save(path)
    return path


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# ------------------------------------------------------------------ reading rows


def test_load_rows_formats_and_concatenation(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "cols.json").write_text(json.dumps({"prompt": ["a", "b"], "answer": ["1", "2"]}))
    (tmp_path / "d.csv").write_text("prompt,answer\na,1\nb,2\n")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_stream(sink, pa.schema(
            [("prompt", pa.string()), ("answer", pa.string())])) as writer:
        writer.write_table(pa.Table.from_pylist(rows))
    for name in ("d.parquet", "d.jsonl", "list.json", "cols.json", "d.arrow"):
        assert load_rows(str(tmp_path / name)) == rows, name
    assert [r["prompt"] for r in load_rows(str(tmp_path / "d.csv"))] == ["a", "b"]
    both = load_rows(f"{tmp_path / 'd.parquet'}, {tmp_path / 'd.jsonl'}")
    assert [r["prompt"] for r in both] == ["a", "b", "a", "b"]
    assert len(load_rows(str(tmp_path / "d.*"))) == 2 * 4  # a glob: d.arrow, d.csv, d.jsonl, d.parquet


def test_a_data_file_named_with_brackets_is_read_as_named(tmp_path):
    _jsonl(tmp_path / "rows[1].jsonl", [{"prompt": "bracketed", "answer": "1"}])
    _jsonl(tmp_path / "rows1.jsonl", [{"prompt": "what the pattern rows[1] matches", "answer": "2"}])
    assert [r["prompt"] for r in load_rows(str(tmp_path / "rows[1].jsonl"))] == ["bracketed"]
    assert len(load_rows(str(tmp_path / "rows[0-9].jsonl"))) == 1  # a name that is no file is still a pattern


def test_load_rows_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": "p", "answer": "1"}, {"prompt": "q", "answer": "2"}])
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_rows(str(tmp_path / "saved")) == [{"prompt": "p", "answer": "1"}, {"prompt": "q", "answer": "2"}]
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="several splits.*dd@train"):
        load_rows(str(tmp_path / "dd"))
    assert len(load_rows(str(tmp_path / "dd" / "train"))) == 2
    assert load_rows(f"{tmp_path / 'dd'}@train") == load_rows(str(tmp_path / "dd" / "train"))
    with pytest.raises(DataError, match="no split folder 'test'"):
        load_rows(f"{tmp_path / 'dd'}@test")


def test_load_rows_hub_layout_folder_and_split_suffix(tmp_path):
    """A dataset repo downloaded as is (`data/train-00000-of-00001.parquet`, images embedded as bytes, as
    hiyouga/geometry3k) reads with `FOLDER@split`; its images stay undecoded {"bytes", "path"} dicts."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from rllava.data.dataset import data_source
    from rllava.data.rows import split_suffix

    repo = tmp_path / "geometry3k"
    (repo / "data").mkdir(parents=True)
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    for split, n in (("train", 3), ("test", 2)):
        rows = {"images": [[Image.new("RGB", (8 + i, 8), "red")] for i in range(n)],
                "problem": [f"<image>{split} {i}" for i in range(n)], "answer": [str(i) for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(repo / "data" / f"{split}-00000-of-00001.parquet")
    test = load_rows(f"{repo}@test")
    assert [r["problem"] for r in test] == ["<image>test 0", "<image>test 1"]
    image = test[1]["images"][0]
    assert set(image) == {"bytes", "path"} and Image.open(io.BytesIO(image["bytes"])).size == (9, 8)
    assert len(load_rows(f"{repo}@train, {repo}@test")) == 5
    with pytest.raises(DataError, match=r"geometry3k holds the splits \['test', 'train'\]; name one, e.g. .*@test"):
        load_rows(str(repo))
    with pytest.raises(DataError, match="geometry3k@validation: `datasets.load_dataset` failed"):
        load_rows(f"{repo}@validation")
    with pytest.raises(DataError, match=r"not found \(for a dataset repo: huggingface-cli download .* --local-dir "
                                        r".*missing_repo; a synthetic stand-in"):
        load_rows(f"{tmp_path / 'missing_repo'}@train")
    assert split_suffix(f"{repo}@test") == (str(repo), "test")
    assert split_suffix("hiyouga/geometry3k@train") == ("hiyouga/geometry3k", "train")
    assert split_suffix("hiyouga/geometry3k:test") == ("hiyouga/geometry3k", "test")
    assert split_suffix("a@b.parquet") == ("a@b.parquet", None)  # not a folder or hub name: a file name with an @
    odd = tmp_path / "runs" / "x:1.jsonl"  # an existing file keeps its whole name, even one that looks like a split
    odd.parent.mkdir()
    odd.write_text('{"prompt": "p", "answer": "1"}\n')
    assert split_suffix(str(odd)) == (str(odd), None) and load_rows(str(odd)) == [{"prompt": "p", "answer": "1"}]
    assert data_source("hiyouga/geometry3k@test") == "geometry3k" and data_source(f"{repo}@train") == "geometry3k"


def test_split_slices(tmp_path):
    """`FOLDER@train[-2:]` holds out part of a one-split dataset (R1-V's CLEVR): Python's slices, percentages of the
    split's rows, on folders in the hub's layout and `save_to_disk` folders alike."""
    datasets = pytest.importorskip("datasets")
    from rllava.data.dataset import data_source
    from rllava.data.rows import split_slice, split_suffix

    ten = list(range(10))
    assert split_slice("train", ten) == ten
    assert split_slice("train[:-3]", ten) == [0, 1, 2, 3, 4, 5, 6] and split_slice("train[-3:]", ten) == [7, 8, 9]
    assert split_slice("train[2:4]", ten) == [2, 3] and split_slice("train[:25%]", ten) == [0, 1]  # 2.5 rounds to 2
    assert split_slice("train[-20%:]", ten) == [8, 9] and split_slice("train[10%:-10%]", ten) == list(range(1, 9))
    repo = tmp_path / "clevr"
    (repo / "data").mkdir(parents=True)
    rows = {"problem": [f"q{i}" for i in range(6)], "solution": [f"<answer> {i} </answer>" for i in range(6)]}
    datasets.Dataset.from_dict(rows).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    head, tail = load_rows(f"{repo}@train[:-2]"), load_rows(f"{repo}@train[-2:]")
    assert [r["problem"] for r in head] == ["q0", "q1", "q2", "q3"] and [r["problem"] for r in tail] == ["q4", "q5"]
    assert len(load_rows(f"{repo}@train[:-2], {repo}@train[-2:]")) == 6  # a slice is not a glob pattern
    assert split_suffix(f"{repo}@train[50%:]") == (str(repo), "train[50%:]") and data_source(f"{repo}@train[-2:]") == "clevr"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert [r["problem"] for r in load_rows(f"{tmp_path / 'dd'}@train[1:3]")] == ["q1", "q2"]
    with pytest.raises(DataError, match="matches no file"):  # not a slice: a glob pattern that matches nothing
        load_rows(f"{repo}@train[a:b]")


def test_load_rows_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: invalid JSON"):
        load_rows(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(DataError, match="empty: a folder with no data files"):
        load_rows(str(tmp_path / "empty"))
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unknown data file type"):
        load_rows(str(tmp_path / "x.xlsx"))


# ------------------------------------------------------------------ templates and images (pure)


def test_prompt_template_string_file_and_missing_field(tmp_path):
    row = {"question": "How many?", "unit": "cm", "answer": "3"}
    assert PromptTemplate(None, "question").render(row) == "How many?"
    assert PromptTemplate("{{ prompt }} ({{ unit }})", "question").render(row) == "How many? (cm)"
    (tmp_path / "t.jinja").write_text("Q: {{ question }}")
    assert PromptTemplate(str(tmp_path / "t.jinja"), "question").render(row) == "Q: How many?"
    with pytest.raises(TemplateError, match="'missing' is undefined"):
        PromptTemplate("{{ missing }}").render({"prompt": "x"})
    with pytest.raises(TemplateError, match="not found"):
        PromptTemplate(str(tmp_path / "nope.jinja"))


def test_image_markers_become_content_parts():
    assert content_parts("Compare <image> and <image>.", 2, 0) == [
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " and "},
        {"type": "image"}, {"type": "text", "text": "."}]
    # images without a marker go first; videos after images
    assert content_parts("Look: <image>", 2, 1) == [
        {"type": "image"}, {"type": "video"}, {"type": "text", "text": "Look: "}, {"type": "image"}]
    with pytest.raises(TemplateError, match="2 <image> and 0 <video> markers but the row has 1 image"):
        content_parts("<image><image>", 1, 0)
    msgs = build_messages("hi", system_prompt="sys", multimodal=False)
    assert msgs == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError, match="text-only"):
        build_messages("<image>hi", 1, multimodal=False)


def test_fit_pixels_keeps_aspect_ratio_within_budget():
    assert fit_pixels(100, 100, 3136, 200704) == (100, 100)
    w, h = fit_pixels(1000, 500, 3136, 200000)  # scale sqrt(200000 / 500000) = 0.632
    assert (w, h) == (632, 316) and w * h <= 200000
    w, h = fit_pixels(10, 20, 3136, 200000)
    assert w * h >= 3136 and abs(h / w - 2) < 0.05
    img = resize_image(Image.new("RGB", (896, 448)), 3136, 100352)
    assert img.size == (448, 224)


def test_load_image_from_every_reference_kind(tmp_path):
    png = _png(tmp_path / "a.png", (7, 5), (0, 255, 0))
    raw = png.read_bytes()
    for ref in ("a.png", str(png), raw, {"bytes": raw, "path": None}, {"bytes": None, "path": "a.png"},
                Image.open(png), Image.new("L", (7, 5), 128)):
        img = load_image(ref, tmp_path)
        assert img.mode == "RGB" and img.size == (7, 5)
    assert load_image(raw).getpixel((0, 0)) == (0, 255, 0)


def test_video_layouts_and_frame_sampling():
    assert sample_indices(5, 4) == [0, 1, 3, 4]
    assert sample_indices(3, 8) == [0, 1, 2]
    assert normalize_videos("clip.mp4") == ["clip.mp4"]
    assert normalize_videos(["a.png", "b.png"]) == [["a.png", "b.png"]]  # one frame-list video
    assert normalize_videos([["a.png"], ["b.png"]]) == [["a.png"], ["b.png"]]
    assert normalize_videos(["a.mp4", "b.mp4"]) == ["a.mp4", "b.mp4"]
    assert normalize_videos(None) == []


# ------------------------------------------------------------------ RLDataset with real processors


def test_text_only_dataset_matches_the_chat_template(tmp_path, text_tok):
    f = _jsonl(tmp_path / "math.jsonl", [{"question": "1+1?", "answer": 2, "level": "easy"}])
    cfg = DataConfig(prompt_key="question", template="Solve: {{ prompt }}", system_prompt="Be brief.")
    ds = RLDataset(str(f), cfg, text_tok)
    p = ds[0]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSolve: 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert p.text == expected
    assert p.input_ids == text_tok(expected, add_special_tokens=False)["input_ids"]
    assert p.mm == {} and p.seq == {} and p.images == []
    assert p.meta == {"question": "1+1?", "answer": "2", "level": "easy", "index": 0, "data_source": "math"}
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}>")
    override = RLDataset(str(f), DataConfig(prompt_key="question", chat_template=str(tmp_path / "chat.jinja")),
                         text_tok)
    assert override[0].text == "[user] 1+1?\n>"


def test_answer_template_renders_the_ground_truth_from_the_row(tmp_path, text_tok):
    """GSM8K keeps its final number after '####' in a worked solution: data.answer_template pulls it out."""
    rows = [{"question": "2+3?", "answer": "2 plus 3 is 5.\n#### 5"},
            {"question": "1000+234?", "answer": "Add them.\n#### 1,234"},
            {"question": "no answer", "solution": "x"}]
    f = _jsonl(tmp_path / "gsm.jsonl", rows)
    cfg = DataConfig(prompt_key="question", skip_bad_rows=True,
                     answer_template="{{ answer.split('####')[-1] | replace(',', '') }}")
    ds = RLDataset(str(f), cfg, text_tok)
    assert [ds[i].meta["answer"] for i in range(len(ds))] == ["5", "1234"]  # rendered, then stripped
    assert ds.n_bad == 1 and "gsm.jsonl, row 2, field 'answer_template'" in ds.bad_rows[0]
    assert "uses a field the row does not have" in ds.bad_rows[0]
    with pytest.raises(DataError, match=r"gsm.jsonl, row 2, field 'answer_template': data.answer_template uses a field"):
        RLDataset(str(f), dataclasses.replace(cfg, skip_bad_rows=False), text_tok)
    # The template may read any field, so a row needs no answer_key field of its own.
    only_solution = RLDataset(str(f), DataConfig(prompt_key="question", answer_template="{{ solution }}x",
                                                 skip_bad_rows=True), text_tok)
    assert [only_solution[i].meta["answer"] for i in range(len(only_solution))] == ["xx"]
    math = _jsonl(tmp_path / "math.jsonl", [{"problem": "p", "solution": "So $x = \\boxed{\\frac{1}{2}}$."}])
    boxed = RLDataset(str(math), DataConfig(prompt_key="problem", answer_template="{{ solution | last_boxed }}"), text_tok)
    assert boxed[0].meta["answer"] == "\\frac{1}{2}"  # MATH-style: the answer is the solution's last box
    numbers = _jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": 7}])
    with pytest.raises(DataError, match=r"n.jsonl, row 0, field 'answer_template': .*failed on this row: .*split"):
        RLDataset(str(numbers), DataConfig(prompt_key="question", answer_template="{{ answer.split('#')[0] }}"),
                  text_tok)


def test_vlm_prompt_on_the_counting_task(counting, qwen_vl):
    _, proc = qwen_vl
    cfg = DataConfig(template="{{ prompt }} Answer with a number.")
    ds = RLDataset(str(counting / "train.parquet"), cfg, proc)
    assert len(ds) == 16 and ds.n_too_long == 0 and ds.n_bad == 0
    p = ds[3]
    row = ds.row(3)
    assert p.meta["answer"] == row["answer"] and p.meta["count"] == row["count"] and p.index == 3
    assert p.meta["images"] == [str(counting / row["images"][0])]  # made absolute for tools
    assert "<|vision_start|><|image_pad|><|vision_end|>How many" in p.text and p.text.endswith("assistant\n")
    grid = p.mm["image_grid_thw"]
    n_image_tokens = int(grid.prod()) // 4  # 2x2 patch merge
    assert p.input_ids.count(proc.tokenizer.image_token_id) == n_image_tokens
    assert p.mm["pixel_values"].shape[0] == int(grid.prod())
    # mm_token_type_ids is per token: 1 exactly on the image tokens
    ids = torch.tensor(p.input_ids)
    assert len(p.seq["mm_token_type_ids"]) == len(p.input_ids)
    assert torch.equal(torch.tensor(p.seq["mm_token_type_ids"]) == 1, ids == proc.tokenizer.image_token_id)
    assert p.images[0].size == (64, 64)


def test_prompts_feed_the_model_through_batch(counting, qwen_vl):
    path, proc = qwen_vl
    ds = RLDataset(str(counting / "val.parquet") + "," + str(counting / "test.parquet"), DataConfig(), proc)
    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    episodes = [Episode(prompt=ds[i], response_ids=[5, 6, eos][: i + 2], response_mask=[1] * (i + 2), group_id=i)
                for i in range(len(ds))]
    batch = Batch.from_episodes(episodes, proc.tokenizer.pad_token_id)
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", [f for f, spec in FAMILIES.items() if spec.vision])  # every image family
def test_length_estimate_is_exact(tmp_path, tiny_model_factory, family):
    for i, size in enumerate([(64, 64), (200, 90), (30, 300)]):
        _png(tmp_path / f"{i}.png", size)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo stored landscape, shown portrait: the estimate must use the upright size
    Image.new("RGB", (200, 90), (0, 0, 255)).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    rows = [{"prompt": "<image>one", "answer": "1", "images": ["0.png"]},
            {"prompt": "two <image> and <image>", "answer": "2", "images": ["1.png", "2.png"]},
            {"prompt": "none at all", "answer": "0", "images": []},
            {"prompt": "<image>rotated", "answer": "3", "images": ["rot.jpg"]}]
    f = _jsonl(tmp_path / "rows.jsonl", rows)
    ds = RLDataset(str(f), DataConfig(max_pixels=128 * 128), AutoProcessor.from_pretrained(tiny_model_factory(family)))
    assert [it.length for it in ds.items] == [len(ds[i].input_ids) for i in range(len(rows))]
    assert ds[3].meta["image_sizes"] == [[90, 200]]


def test_length_falls_back_to_processing_when_the_probe_fails(tmp_path, qwen_vl, monkeypatch, caplog):
    _png(tmp_path / "a.png", (100, 60))
    f = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "<image>one", "answer": "1", "images": ["a.png"]}])

    def probe_fails(self, *args):
        raise RuntimeError("this processor needs real text")

    monkeypatch.setattr(RLDataset, "_extra", probe_fails)
    with caplog.at_level(logging.WARNING, logger="rllava.data.dataset"):
        ds = RLDataset(str(f), DataConfig(), qwen_vl[1])
    assert ds.items[0].length == len(ds[0].input_ids) > 10 and "processing each row once" in caplog.text


def test_over_long_prompts_are_filtered_and_counted(tmp_path, qwen_vl, caplog):
    _, proc = qwen_vl
    _png(tmp_path / "big.png", (448, 448))
    _png(tmp_path / "small.png", (56, 56))
    f = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "<image>a", "answer": "1", "images": ["big.png"]},
                                         {"prompt": "<image>b", "answer": "1", "images": ["small.png"]}])
    full = RLDataset(str(f), DataConfig(), proc)
    small_len = len(full[1].input_ids)  # 56x56 -> 4 patches of 14 -> 4 tokens, plus text
    with caplog.at_level(logging.WARNING, logger="rllava.data.dataset"):
        ds = RLDataset(str(f), DataConfig(max_prompt_length=small_len), proc)
    assert len(ds) == 1 and ds.n_too_long == 1 and ds.row(0)["prompt"] == "<image>b"
    assert "dropped 1 of 2 prompts longer than data.max_prompt_length" in caplog.text
    with pytest.raises(DataError, match="no usable prompts"):
        RLDataset(str(f), DataConfig(max_prompt_length=3), proc)


def test_image_reference_kinds_in_a_parquet_file(tmp_path, qwen_vl):
    _, proc = qwen_vl
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    raw = _png(img_dir / "a.png", (60, 60), (0, 0, 255)).read_bytes()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"prompt": ["<image>x", "y <image>"], "answer": ["1", "2"],
                      "pics": pa.array([[{"bytes": raw, "path": None}], [{"bytes": None, "path": "a.png"}]],
                                       pa.list_(struct))})
    pq.write_table(table, tmp_path / "d.parquet")
    ds = RLDataset(str(tmp_path / "d.parquet"), DataConfig(image_key="pics", image_dir=str(img_dir)), proc)
    for i in range(2):
        p = ds[i]
        assert p.images[0].getpixel((5, 5)) == (0, 0, 255) and "image_grid_thw" in p.mm


def test_bad_rows_name_file_row_and_field(tmp_path, qwen_vl, caplog):
    _, proc = qwen_vl
    _png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    good = {"prompt": "<image>fine", "answer": "1", "images": ["ok.png"]}
    cases = {
        "no_prompt": ({"answer": "1"}, "row 1, field 'prompt': missing"),
        "int_prompt": ({"prompt": 5, "answer": "1"}, "row 1, field 'prompt': expected text"),
        "no_answer": ({"prompt": "q"}, "row 1, field 'answer': missing"),
        "missing_img": ({**good, "images": ["gone.png"]}, "row 1, field 'images': image 0: image file .*gone.png"),
        "corrupt_img": ({**good, "images": ["corrupt.png"]}, "row 1, field 'images': image 0: cannot read image"),
        "bad_type": ({**good, "images": [3.5]}, "row 1, field 'images': image 0: unsupported image value"),
        "markers": ({**good, "prompt": "<image><image>"}, "row 1, field 'prompt': the prompt has 2 <image>"),
    }
    for name, (bad, pattern) in cases.items():
        f = _jsonl(tmp_path / f"{name}.jsonl", [good, bad])
        with pytest.raises(DataError, match=f"{name}.jsonl, {pattern}"):
            RLDataset(str(f), DataConfig(), proc)
        with caplog.at_level(logging.WARNING, logger="rllava.data.dataset"):
            ds = RLDataset(str(f), DataConfig(skip_bad_rows=True), proc)
        assert len(ds) == 1 and ds.n_bad == 1 and "skipped 1 bad row" in caplog.text
    f = _jsonl(tmp_path / "template.jsonl", [good])
    with pytest.raises(DataError, match="row 0, field 'template': .*'unit' is undefined"):
        RLDataset(str(f), DataConfig(template="{{ prompt }} {{ unit }}"), proc)


def test_undecodable_image_fails_at_access_and_the_loader_can_skip_it(tmp_path, qwen_vl):
    _, proc = qwen_vl
    png = _png(tmp_path / "ok.png", (64, 64)).read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])  # valid header, broken pixels
    rows = [{"prompt": "<image>a", "answer": "1", "images": ["ok.png"]},
            {"prompt": "<image>b", "answer": "2", "images": ["truncated.png"]}]
    f = _jsonl(tmp_path / "rows.jsonl", rows)
    ds = RLDataset(str(f), DataConfig(), proc)  # headers read fine: the row passes construction
    with pytest.raises(DataError, match=r"rows.jsonl, row 1, field 'images': cannot decode image"):
        ds[1]
    ds_skip = RLDataset(str(f), DataConfig(skip_bad_rows=True), proc)
    loader = PromptLoader(ds_skip, batch_size=2, shuffle=False)
    batch = loader.next_batch()
    assert [p.meta["answer"] for p in batch] == ["1", "1"] and ds_skip.n_bad == 1 and loader.skipped == {1}


def test_rows_the_processor_rejects_name_the_row_and_can_be_skipped(tmp_path, qwen_vl):
    _, proc = qwen_vl
    _png(tmp_path / "ok.png")
    _png(tmp_path / "banner.png", (3000, 10))  # 300:1, over Qwen-VL's 200:1 limit
    ok = {"prompt": "<image>a", "answer": "1", "images": ["ok.png"]}
    f = _jsonl(tmp_path / "banner.jsonl", [ok, {**ok, "prompt": "<image>b", "images": ["banner.png"]}])
    with pytest.raises(DataError, match=r"banner.jsonl, row 1, field 'images': the processor rejected .*aspect ratio"):
        RLDataset(str(f), DataConfig(), proc)
    ds = RLDataset(str(f), DataConfig(skip_bad_rows=True), proc)
    assert len(ds) == 1 and ds.n_bad == 1
    # Frames of different sizes pass construction (headers of the first frame only) and fail at access.
    for i, size in enumerate([(56, 56), (56, 56), (80, 40), (80, 40)]):
        _png(tmp_path / f"f{i}.png", size)
    video = {"prompt": "<video>a", "answer": "2", "videos": [f"f{i}.png" for i in range(4)]}
    f = _jsonl(tmp_path / "frames.jsonl", [video, {**ok, "answer": "3"}])
    with pytest.raises(DataError, match=r"frames.jsonl, row 0, field 'videos': the processor rejected"):
        RLDataset(str(f), DataConfig(), proc)[0]
    ds = RLDataset(str(f), DataConfig(skip_bad_rows=True), proc)
    loader = PromptLoader(ds, batch_size=2, shuffle=False)
    assert [p.meta["answer"] for p in loader.next_batch()] == ["3", "3"] and loader.skipped == {0}


def test_a_row_the_processor_rejects_is_not_blamed_on_the_blank_probe(tmp_path, qwen_vl, caplog):
    _, proc = qwen_vl
    _png(tmp_path / "ok.png", (64, 64))
    _png(tmp_path / "banner.png", (4000, 10))  # 400:1: the probe of its size fails, and so does the row itself
    rows = [{"prompt": "<image>a", "answer": "1", "images": ["ok.png"]},
            {"prompt": "<image>b", "answer": "2", "images": ["banner.png"]},
            {"prompt": "<image>c", "answer": "3", "images": ["ok.png"]}]
    f = _jsonl(tmp_path / "rows.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rllava.data.dataset"):
        ds = RLDataset(str(f), DataConfig(skip_bad_rows=True, max_pixels=1_000_000), proc)
    assert [ds.row(i)["answer"] for i in range(len(ds))] == ["1", "3"] and ds.n_bad == 1
    assert "row 1, field 'images': the processor rejected" in ds.bad_rows[0]
    assert "blank probe" not in caplog.text and "skipped 1 bad row" in caplog.text


def test_an_image_named_with_a_leading_tilde_is_a_file_next_to_the_data(tmp_path, qwen_vl):
    _png(tmp_path / "~draft.png", (56, 56), (0, 255, 0))  # no user "draft.png": not a home folder
    f = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "<image>a", "answer": "1", "images": ["~draft.png"]}])
    ds = RLDataset(str(f), DataConfig(), qwen_vl[1])
    assert ds[0].images[0].getpixel((5, 5)) == (0, 255, 0)
    assert load_image("~draft.png", tmp_path).size == (56, 56)


def test_non_finite_answers_count_as_missing(tmp_path, text_tok):
    rows = [{"prompt": "2+2?", "answer": 4.0}, {"prompt": "3+3?", "answer": float("nan")},
            {"prompt": "1/0?", "answer": float("inf")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match=r"nan.parquet, row 1, field 'answer': missing \(nan"):
        RLDataset(str(tmp_path / "nan.parquet"), DataConfig(), text_tok)
    ds = RLDataset(str(tmp_path / "nan.parquet"), DataConfig(skip_bad_rows=True), text_tok)
    assert len(ds) == 1 and ds.n_bad == 2 and "row 2, field 'answer': missing (inf" in ds.bad_rows[1]


def test_text_only_model_rejects_image_rows(tmp_path, text_tok):
    _png(tmp_path / "a.png")
    f = _jsonl(tmp_path / "r.jsonl", [{"prompt": "<image>x", "answer": "1", "images": ["a.png"]}])
    with pytest.raises(DataError, match="row 0, field 'prompt': .*text-only"):
        RLDataset(str(f), DataConfig(), text_tok)


def test_video_frames_are_sampled(tmp_path, qwen_vl):
    _, proc = qwen_vl
    for i in range(5):
        _png(tmp_path / f"f{i}.png", (56, 56), (40 * i, 0, 0))
    rows = [{"prompt": "What changes? <video>", "answer": "red", "videos": [f"f{i}.png" for i in range(5)]},
            {"prompt": "<video>", "answer": "x", "videos": "clip.mp4"}]
    f = _jsonl(tmp_path / "v.jsonl", rows[:1])
    ds = RLDataset(str(f), DataConfig(max_frames=4), proc)
    p = ds[0]
    assert int(p.mm["video_grid_thw"][0, 0]) == 2  # 4 frames / temporal patch 2
    _, videos = ds.load_media(0)
    assert [f.getpixel((0, 0))[0] for f in videos[0]] == [0, 40, 120, 160]  # frames 0, 1, 3, 4 of 5
    assert ds.items[0].length == len(p.input_ids)
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)  # not a real video
    try:
        import av  # noqa: F401

        reason = "cannot decode video"
    except ImportError:
        reason = "needs PyAV: `pip install av`"
    with pytest.raises(DataError, match=f"file.jsonl, row 0, field 'videos': video 0: .*{reason}"):
        RLDataset(str(_jsonl(tmp_path / "file.jsonl", rows[1:])), DataConfig(), proc)


# ------------------------------------------------------------------ PromptLoader


class _Numbers:
    """A dataset of its own indices (the loader only needs len and getitem)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_loader_covers_each_epoch_and_runs_on_across_epochs():
    loader = PromptLoader(_Numbers(10), batch_size=4, shuffle=True, seed=1)
    assert loader.steps_per_epoch == 3
    stream = loader.next_batch() + loader.next_batch()
    assert loader.epoch == 0
    stream += loader.next_batch()  # the last 2 of epoch 0, then the first 2 of epoch 1
    assert sorted(stream[:10]) == list(range(10)) and loader.epoch == 1
    stream += loader.next_batch() + loader.next_batch()
    assert sorted(stream[10:20]) == list(range(10)) and stream[10:20] != stream[:10]
    plain = PromptLoader(_Numbers(5), batch_size=2, shuffle=False)
    assert [plain.next_batch() for _ in range(3)] == [[0, 1], [2, 3], [4, 0]]
    other = PromptLoader(_Numbers(10), batch_size=10, seed=2)
    assert other.next_batch() != PromptLoader(_Numbers(10), batch_size=10, seed=1).next_batch()


def test_loader_resumes_exactly():
    reference = PromptLoader(_Numbers(7), batch_size=3, seed=5)
    expected = [reference.next_batch() for _ in range(8)]
    first = PromptLoader(_Numbers(7), batch_size=3, seed=5)
    got = [first.next_batch() for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data: safe to save anywhere
    resumed = PromptLoader(_Numbers(7), batch_size=3, seed=5)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(5)]
    assert got == expected
    with pytest.raises(DataError, match="data changed since the checkpoint. Start fresh with trainer.resume=none"):
        PromptLoader(_Numbers(8), batch_size=3).load_state_dict(state)


def test_shares_split_exactly_in_proportion():
    from rllava.data.loader import shares

    assert shares([1, 1], 5) == [3, 2] and shares([0.7, 0.3], 10) == [7, 3] and shares([3, 0], 4) == [4, 0]
    assert shares([1, 1, 1], 10) == [4, 3, 3] and sum(shares([0.2, 0.5, 0.3], 7)) == 7


def test_loader_mix_draws_each_source_by_its_weight_and_resumes_exactly():
    """2 prompts of source 0 and 8 of source 1 at weights 1:1: each 10-prompt epoch holds 5 of each; source 0
    repeats (each prompt once before any twice), source 1 is subsampled, fresh every epoch."""
    sources = [0, 0] + [1] * 8
    mixed = PromptLoader(_Numbers(10), batch_size=5, seed=3, weights=[1.0, 1.0], sources=sources)
    assert mixed.steps_per_epoch == 2
    epochs = []
    for _ in range(3):
        epochs.append(mixed.next_batch() + mixed.next_batch())
    for epoch in epochs:
        small, large = [i for i in epoch if i < 2], [i for i in epoch if i >= 2]
        assert len(small) == len(large) == 5
        assert sorted(small.count(i) for i in (0, 1)) == [2, 3] and len(set(large)) == 5
    assert len({tuple(e) for e in epochs}) == 3  # each epoch drawn afresh
    again = PromptLoader(_Numbers(10), batch_size=5, seed=3, weights=[1.0, 1.0], sources=sources)
    assert [again.next_batch() for _ in range(6)] == [b for e in epochs for b in (e[:5], e[5:])]
    first = PromptLoader(_Numbers(10), batch_size=5, seed=3, weights=[1.0, 1.0], sources=sources)
    got = [first.next_batch() for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PromptLoader(_Numbers(10), batch_size=5, seed=3, weights=[1.0, 1.0], sources=sources)
    resumed.load_state_dict(state)
    assert got + [resumed.next_batch() for _ in range(3)] == [b for e in epochs for b in (e[:5], e[5:])]
    with pytest.raises(DataError, match="the mix changed since the checkpoint. Start fresh"):
        PromptLoader(_Numbers(10), batch_size=5, seed=3).load_state_dict(state)
    only_large = PromptLoader(_Numbers(10), batch_size=5, seed=3, weights=[0.0, 1.0], sources=sources)
    assert all(i >= 2 for _ in range(4) for i in only_large.next_batch())
    with pytest.raises(DataError, match="entry 0 has weight 1.0 but no usable prompts"):
        PromptLoader(_Numbers(8), batch_size=2, weights=[1.0, 1.0], sources=[1] * 8)


class _Broken(_Numbers):
    """Prompts below `bad` fail to load; the loader may skip them."""

    skip_bad_rows = True

    def __init__(self, n, bad):
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i):
        if i < self.bad:
            raise DataError(f"row {i}: broken")
        return i


@contextlib.contextmanager
def _deadline(seconds):
    """Fail (instead of hanging the suite) when the block runs past `seconds`."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_loader_counts_only_the_sources_a_mix_draws():
    """A weight-0 source (or one whose share rounds to 0 prompts) is never drawn: its prompts neither keep the
    retire floor up nor stop the loader from seeing that every drawable prompt is gone."""
    for weights, sources in (([1.0, 0.0], [0] * 5 + [1] * 5), ([1.0, 0.004], [0] * 99 + [1])):
        n = len(sources)
        loader = PromptLoader(_Numbers(n), batch_size=2, weights=weights, sources=sources)
        assert loader.retire([i for i in range(n) if sources[i] == 0]) == sources.count(0) - 2  # the floor holds
        with _deadline(5):
            batch = loader.next_batch()
        assert len(batch) == 2 and all(sources[i] == 0 and i not in loader.retired for i in batch)
        broken = PromptLoader(_Broken(n, sources.count(0)), batch_size=2, weights=weights, sources=sources)
        with _deadline(5), pytest.raises(DataError, match="every prompt that data.train_weights draws failed"):
            broken.next_batch()


def test_train_weights_in_a_run_and_in_rllava_check(counting, tiny_model_factory, tmp_path):
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.preflight import preflight
    from rllava.pipelines.run import check_settings
    from rllava.tasks import make_task

    other = make_task("counting", tmp_path / "other", n=40, seed=1)
    files = f"{counting / 'train.parquet'},{other / 'train.parquet'}"
    with pytest.raises(ConfigError, match="train_weights has 1 weight.*2 comma-separated entries"):
        check_settings(load_config(None, [f"data.train_files={files}", "data.train_weights=[1.0]"]))
    with pytest.raises(ConfigError, match="weights must be >= 0"):
        check_settings(load_config(None, [f"data.train_files={files}", "data.train_weights=[0, 0]"]))
    cfg = load_config(None, [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={files}",
                             "data.train_weights=[3, 1]", "reward.functions={count: 1.0}"])
    mix = preflight(cfg)["train"]["mix"]
    n_first = len(load_rows(str(counting / "train.parquet")))
    n_other = len(load_rows(str(other / "train.parquet")))
    total = n_first + n_other
    assert [m["prompts"] for m in mix] == [n_first, n_other]
    assert [m["per_epoch"] for m in mix] == [round(total * 3 / 4), total - round(total * 3 / 4)]
    # A run hands the weights to its loader (its checkpointed state holds them).
    from rllava.pipelines.run import run_experiment

    weighted = load_config(None, [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={files}",
                                  "data.train_weights=[0, 1]", "reward.functions={count: 1.0}", "data.val_files=",
                                  "data.batch_size=4", "rollout.n=2", "rollout.max_new_tokens=2", "trainer.total_steps=2",
                                  f"trainer.output_dir={tmp_path / 'runs'}", "trainer.progress_bar=false",
                                  "trainer.loggers=[jsonl]", "trainer.save_freq=0"])
    result = run_experiment(weighted)
    state = torch.load(Path(result["run_dir"]) / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=False)
    assert state["loader"]["weights"] == [0.0, 1.0] and state["loader"]["position"] == 8


def test_loader_with_real_prompts(counting, qwen_vl):
    ds = RLDataset(str(counting / "train.parquet"), DataConfig(), qwen_vl[1])
    batch = PromptLoader(ds, batch_size=4, seed=0).next_batch()
    assert len(batch) == 4 and len({p.index for p in batch}) == 4


def test_rows_with_bytes_images_load_via_pil(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, format="PNG")
    assert load_image({"bytes": buf.getvalue()}).getpixel((2, 1)) == (1, 2, 3)


@pytest.mark.parametrize("family, seen", [("qwen2_vl", [504, 392]), ("llava", [517, 387])])
def test_rows_record_image_sizes_for_box_frames(tmp_path, tiny_model_factory, family, seen):
    """A 640x480 image over max_pixels: rllava resizes it to 517x387, and Qwen-VL's processor then to whole
    28 px patches, 504x392 (read from its patch grid). A box written in that frame scores as the ground truth."""
    from rllava.rewards import RewardFunction

    _png(tmp_path / "a.png", (640, 480))
    f = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "<image>Where?", "answer": "[160, 120, 320, 240]", "images": ["a.png"]}])
    processor = AutoProcessor.from_pretrained(tiny_model_factory(family))
    prompt = RLDataset(str(f), DataConfig(max_pixels=200704), processor)[0]
    assert prompt.meta["image_sizes"] == [[640, 480]] and prompt.meta["input_image_sizes"] == [seen]
    if "image_grid_thw" in prompt.mm:
        assert (prompt.mm["image_grid_thw"][0, 1:] * 14).tolist() == seen[::-1]  # (height, width) in patches
    sx, sy = seen[0] / 640, seen[1] / 480
    written = f"<answer>[{160 * sx}, {120 * sy}, {320 * sx}, {240 * sy}]</answer>"
    fn = RewardFunction({"iou": 1.0}, kwargs={"iou": {"box_frame": "input"}})
    assert fn.score_one(written, prompt.meta)[0] == pytest.approx(1.0)
    assert RewardFunction({"iou": 1.0}).score_one(written, prompt.meta)[0] < 0.8  # read as the image's pixels
