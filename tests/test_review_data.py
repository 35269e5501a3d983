"""Review of data loading and tasks: JSON errors and byte-order marks, `~` in globs, a split of one data file,
blank media fields, empty ground truths, chat templates given as a model's chat_template.json or failing in jinja,
video files sampled without keeping every frame, and task options that draw no scene."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image
from transformers import AutoTokenizer

from rllava.config import DataConfig
from rllava.data.dataset import RLDataset, data_source
from rllava.data.rows import DataError, load_rows
from rllava.data.template import TemplateError, set_chat_template
from rllava.tasks import make_task


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_json_syntax_error_is_named_where_it_is(tmp_path):
    # A pretty-printed list whose 4th row has a trailing comma: the error is on line 5, not "line 1".
    f = tmp_path / "rows.json"
    f.write_text('[\n  {"prompt": "a", "answer": "1"},\n  {"prompt": "b", "answer": "2"},\n'
                 '  {"prompt": "c", "answer": "3"},\n  {"prompt": "d", "answer": "4",}\n]\n')
    with pytest.raises(DataError, match=r"rows.json, line 5, column 33: invalid JSON: Expecting property name"):
        load_rows(str(f))
    # JSON lines under a .json name still read, and their bad line is still the one named.
    g = tmp_path / "lines.json"
    g.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "c",\n')
    with pytest.raises(DataError, match=r"lines.json, line 3: invalid JSON"):
        load_rows(str(g))
    g.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
    assert [r["prompt"] for r in load_rows(str(g))] == ["a", "b"]


def test_json_files_with_a_byte_order_mark_load(tmp_path):
    row = {"prompt": "é?", "answer": "1"}
    (tmp_path / "a.jsonl").write_text("\ufeff" + json.dumps(row) + "\n", encoding="utf-8")
    (tmp_path / "b.json").write_text("\ufeff" + json.dumps([row]), encoding="utf-8")
    assert load_rows(f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.json'}") == [row, row]


def test_a_glob_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    for name in ("part-1", "part-0"):
        _jsonl(tmp_path / "data" / f"{name}.jsonl", [{"prompt": name, "answer": "1"}])
    assert [r["prompt"] for r in load_rows("~/data/part-*.jsonl")] == ["part-0", "part-1"]


def test_blank_media_fields_are_text_only_rows(tmp_path, qwen_vl):
    # A CSV (or a table exported from one) writes a text-only row's missing image path as an empty string.
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    f = tmp_path / "rows.csv"
    f.write_text("prompt,answer,images,videos\n<image>What colour?,red,a.png,\nWhat is 2+2?,4,,\n")
    ds = RLDataset(str(f), DataConfig(), qwen_vl)
    assert len(ds) == 2 and ds.n_bad == 0
    with_image, text_only = ds[0], ds[1]
    assert "image_grid_thw" in with_image.mm and len(with_image.images) == 1
    assert text_only.mm == {} and text_only.images == [] and "<|image_pad|>" not in text_only.text
    assert text_only.text.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_from_a_model_folders_json_file(tmp_path, text_tok):
    # Model folders keep their template in chat_template.json or tokenizer_config.json, as a JSON string.
    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi", "answer": "1"}])
    mine = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": mine}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 8, "chat_template": [{"name": "tool_use", "template": "x"},
                                                  {"name": "default", "template": mine}]}))
    for name in ("chat_template.json", "tokenizer_config.json"):
        ds = RLDataset(str(rows), DataConfig(chat_template=str(tmp_path / name)), text_tok)
        assert ds.items[0].text == "[user] hi\n[assistant]"
    tok = AutoTokenizer.from_pretrained(text_tok.name_or_path)
    set_chat_template(tok, str(tmp_path / "chat_template.json"))
    assert tok.chat_template == mine
    (tmp_path / "other.json").write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(TemplateError, match=r"other.json' is JSON without a \"chat_template\" string"):
        RLDataset(str(rows), DataConfig(chat_template=str(tmp_path / "other.json")), text_tok)
    with pytest.raises(TemplateError, match=r"data.chat_template file '.*missing.json' not found"):
        set_chat_template(tok, str(tmp_path / "missing.json"))


def test_chat_template_failures_name_the_setting_and_the_row(tmp_path, text_tok):
    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi", "answer": "1"}])
    with pytest.raises(DataError, match=r"rows.jsonl, row 0, field 'prompt': data.chat_template: jinja syntax error "
                                        r"on line 1: unexpected '}'"):
        RLDataset(str(rows), DataConfig(chat_template="{% for m in messages %}{{ m.content }"), text_tok)
    # A template that refuses a system turn (Gemma's, Mistral's) with data.system_prompt set.
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                 "supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match=r"rows.jsonl, row 0, field 'prompt': data.chat_template failed on this "
                                        r"prompt: System role not supported"):
        RLDataset(str(rows), DataConfig(chat_template=no_system, system_prompt="Be brief."), text_tok)


def test_a_video_file_is_sampled_without_keeping_every_frame(tmp_path):
    """A 20 s 640x480 clip at 30 fps is 600 frames, 550 MB as RGB images; sampling 4 of them must not hold them all
    (a minute of 1080p would be ~20 GB). Run in a fresh interpreter so its peak memory is the decode's."""
    av = pytest.importorskip("av")
    import numpy as np

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(600):
            frame = np.full((480, 640, 3), i % 200, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    # VmHWM: this interpreter's own peak (ru_maxrss would carry over the forking pytest process's).
    code = textwrap.dedent(f"""
        import re
        from rllava.data.vision import sample_video
        frames, times = sample_video({str(clip)!r}, None, max_frames=4, fps=2.0)
        peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
        print(len(frames), times.total, times.fps, list(times.indices), peak_kb // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n, total, fps, peak_mb = int(out[0]), int(out[1]), float(out[2]), int(out[-1])
    # 4 of 600 frames, each at the centre of a 150-frame segment.
    assert (n, total, fps) == (4, 600, 30.0) and "".join(out[3:-1]) == "[75,225,375,525]"
    assert peak_mb < 300, f"peak memory {peak_mb} MB: every frame was kept"


def test_an_empty_ground_truth_is_a_bad_row(tmp_path, text_tok):
    # With an empty answer, `math` and `exact_match` score an empty \boxed{} as right: the policy would learn that.
    rows = _jsonl(tmp_path / "math.jsonl", [{"problem": "1+1?", "solution": "So it is \\boxed{2}."},
                                            {"problem": "x?", "solution": "No box here, x = 5."}])
    cfg = DataConfig(prompt_key="problem", answer_template="{{ solution | last_boxed }}")
    with pytest.raises(DataError, match=r"math.jsonl, row 1, field 'answer_template': the answer is empty"):
        RLDataset(str(rows), cfg, text_tok)
    ds = RLDataset(str(rows), DataConfig(prompt_key="problem", answer_template="{{ solution | last_boxed }}",
                                         skip_bad_rows=True), text_tok)
    assert len(ds) == 1 and ds.n_bad == 1 and ds.meta(0)["answer"] == "2"
    blank = _jsonl(tmp_path / "blank.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": " "}])
    with pytest.raises(DataError, match=r"blank.jsonl, row 1, field 'answer': the answer is empty"):
        RLDataset(str(blank), DataConfig(), text_tok)
    assert len(RLDataset(str(blank), DataConfig(answer_key=""), text_tok)) == 2  # rows without answers, as asked


def test_a_split_of_one_data_file(tmp_path, monkeypatch):
    # One file is one split, train (as `datasets` reads it, and EasyR1's `file.parquet@train`): another split name
    # was silently ignored (every row read) for a relative path, and "not found" for an absolute one.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counting").mkdir()
    _jsonl(tmp_path / "counting" / "all.jsonl", [{"prompt": str(i), "answer": "1"} for i in range(5)])
    for spec in ("counting/all.jsonl@test", f"{tmp_path}/counting/all.jsonl@validation"):
        with pytest.raises(DataError, match=r"all.jsonl is one data file, whose only split is train"):
            load_rows(spec)
    assert [r["prompt"] for r in load_rows(f"{tmp_path}/counting/all.jsonl@train")] == ["0", "1", "2", "3", "4"]
    assert [r["prompt"] for r in load_rows("counting/all.jsonl@train[-2:]")] == ["3", "4"]
    assert data_source("counting/all.jsonl@train[:2]") == data_source("counting/all.jsonl") == "all"


@pytest.mark.parametrize("task, options, message", [
    ("compare", {"max_count": 0}, r"compare: max_count must be in \[1, 9\], got 0"),
    ("compare", {"max_count": 10}, r"compare: max_count must be in \[1, 9\], got 10"),
    ("compare", {"size": 2}, r"size=2 is too small for a 3x3 grid of shapes: at least 18 pixels"),
    ("choice", {"size": 11}, r"size=11 is too small for a 2x2 grid of shapes: at least 12 pixels"),
])
def test_task_options_that_draw_no_scene_are_named(tmp_path, task, options, message):
    # Were "Sample larger than population or is negative" and PIL's "x1 must be greater than or equal to x0".
    with pytest.raises(ValueError, match=message):
        make_task(task, tmp_path / task, n=2, **options)
    make_task("compare", tmp_path / "ok", n=2, size=18, max_count=9)  # the smallest that fit still work


def test_csv_fields_keep_their_text(tmp_path):
    # pyarrow guessed column types: the answer "007" became 7, "1e3" became 1000.0 and "TRUE" became True.
    f = tmp_path / "rows.csv"
    f.write_text("prompt,answer,id\nCode?,007,1\nHow many?,1e3,2\nTrue?,TRUE,3\nBlank?,,4\n")
    rows = load_rows(str(f))
    assert [r["answer"] for r in rows] == ["007", "1e3", "TRUE", ""]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
