"""Prompts given as chat messages: veRL's parquet format (string contents with `<image>` markers) and TRL's
conversational format (content lists), with the task template on the last user turn."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rllava.config import DataConfig
from rllava.data.dataset import RLDataset
from rllava.data.rows import DataError


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def red(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.png")
    return "red.png"


def test_verl_messages_render_as_the_same_prompt_given_as_text(tmp_path, qwen_vl, red):
    # veRL's geo3k/gsm8k parquet: prompt = [{role, content}], `<image>` in the user's text, a list column in parquet
    conv = [{"role": "system", "content": "You count things."}, {"role": "user", "content": "<image>How many?"}]
    as_messages = RLDataset(_parquet(tmp_path / "m.parquet", [{"prompt": conv, "answer": "1", "images": [red]}]),
                            DataConfig(), qwen_vl)
    as_text = RLDataset(_parquet(tmp_path / "t.parquet", [{"prompt": "<image>How many?", "answer": "1",
                                                           "images": [red]}]),
                        DataConfig(system_prompt="You count things."), qwen_vl)
    a, b = as_messages[0], as_text[0]
    assert a.text == b.text and a.input_ids == b.input_ids and "<|image_pad|>" in a.text
    assert torch_equal(a.mm["pixel_values"], b.mm["pixel_values"])
    assert as_messages.items[0].query == as_text.items[0].query == "<image>How many?"  # what a judge is shown


def torch_equal(x, y) -> bool:
    import torch

    return torch.equal(x, y)


def test_trl_content_lists_and_earlier_turns(tmp_path, qwen_vl, red):
    # TRL's conversational rows: content lists with {"type": "image"} items; earlier turns kept in order
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": "Red."},  # (a string beside lists: JSON, not parquet, holds this)
            {"role": "user", "content": [{"type": "text", "text": "And its shape?"}]}]
    ds = RLDataset(_jsonl(tmp_path / "c.jsonl", [{"prompt": conv, "answer": "a rectangle", "images": [red]}]),
                   DataConfig(system_prompt="Be brief."), qwen_vl)
    text = ds[0].text
    order = [text.index(s) for s in ("Be brief.", "<|image_pad|>", "What colour?", "Red.", "And its shape?")]
    assert order == sorted(order) and text.endswith("<|im_start|>assistant\n")
    assert ds.items[0].query == "And its shape?"


def test_the_task_template_rewrites_the_last_user_turn(tmp_path, text_tok):
    conv = [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2 + 3?"}]
    ds = RLDataset(_parquet(tmp_path / "r.parquet", [{"prompt": conv, "answer": "5", "level": "easy"}]),
                   DataConfig(template="{{ prompt }} ({{ level }}) Answer with a number.",
                              system_prompt="not added: the row has a system message"), text_tok)
    assert "2 + 3? (easy) Answer with a number." in ds[0].text
    assert "Think first." in ds[0].text and "not added" not in ds[0].text
    assert ds.items[0].query == "2 + 3? (easy) Answer with a number."


@pytest.mark.parametrize("prompt,error", [
    ([{"content": "hi"}], r"r\.parquet.*row 0.*prompt.*message 0: expected \{'role'"),
    ([{"role": "system", "content": "only a system turn"}], r"row 0.*prompt.*no user turn"),
    ([{"role": "user", "content": "<image><image>two?"}], r"row 0.*prompt.*mark 2 image\(s\).*row has 1"),
    ([{"role": "user", "content": 5}], r"row 0.*prompt.*message 0: content must be text"),
])
def test_bad_messages_name_the_file_row_and_field(tmp_path, qwen_vl, red, prompt, error):
    path = _parquet(tmp_path / "r.parquet", [{"prompt": prompt, "answer": "1", "images": [red]}])
    with pytest.raises(DataError, match=error):
        RLDataset(path, DataConfig(), qwen_vl)


def test_a_text_model_gets_plain_string_contents_and_refuses_images(tmp_path, text_tok, red):
    conv = [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]
    ds = RLDataset(_parquet(tmp_path / "t.parquet", [{"prompt": conv, "answer": "hi"}]), DataConfig(), text_tok)
    assert "Say hi." in ds[0].text
    with pytest.raises(DataError, match=r"row 0.*text-only"):
        RLDataset(_parquet(tmp_path / "i.parquet", [{"prompt": [{"role": "user", "content": "<image>?"}],
                                                     "answer": "1", "images": [red]}]), DataConfig(), text_tok)


def test_a_verl_geo3k_row_loads_as_it_is(tmp_path, qwen_vl):
    """veRL's preprocessed parquet: messages, images as {bytes, path} structs, the answer under reward_model."""
    import io

    png = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(png, format="PNG")
    row = {"data_source": "hiyouga/geometry3k", "prompt": [{"role": "user", "content": "<image>Find x. Think first."}],
           "images": [{"bytes": png.getvalue(), "path": None}], "ability": "math",
           "reward_model": {"style": "rule", "ground_truth": "3"}, "extra_info": {"index": 0, "split": "train"}}
    ds = RLDataset(_parquet(tmp_path / "train.parquet", [row]),
                   DataConfig(answer_key="", answer_template="{{ reward_model.ground_truth }}"), qwen_vl)
    item = ds[0]
    assert ds.items[0].answer == "3" and "<|image_pad|>" in item.text and "Find x. Think first." in item.text
    assert item.mm["image_grid_thw"].shape == (1, 3)


def test_the_template_keeps_the_media_where_the_user_turn_had_them(tmp_path, qwen_vl, red):
    # text, then image: the rendered text takes the first text item's place; a text item whose text is missing
    # (a parquet struct fills absent keys with None) reads as empty
    conv = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"},
                                         {"type": "text", "text": None}]}]
    ds = RLDataset(_jsonl(tmp_path / "o.jsonl", [{"prompt": conv, "answer": "1", "images": [red]}]),
                   DataConfig(template="{{ prompt }} How many?"), qwen_vl)
    text = ds[0].text
    assert text.index("Look: How many?") < text.index("<|image_pad|>")


def test_messages_ending_with_the_reply_are_refused(tmp_path, text_tok):
    # TRL's "messages" rows end with the assistant's reply: as a prompt it leaked the answer and opened a second turn
    conv = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    with pytest.raises(DataError, match=r"row 0, field 'prompt': the messages end with an assistant turn"):
        RLDataset(_jsonl(tmp_path / "m.jsonl", [{"prompt": conv, "answer": "4"}]), DataConfig(), text_tok)


def test_a_text_item_holding_no_text_is_named(tmp_path, text_tok):
    conv = [{"role": "user", "content": [{"type": "text", "text": 5}]}]  # was a bare TypeError from str.join
    with pytest.raises(DataError, match=r"row 0, field 'prompt': message 0, content item 0: .*got 5"):
        RLDataset(_jsonl(tmp_path / "n.jsonl", [{"prompt": conv, "answer": "5"}]), DataConfig(), text_tok)


def test_a_chat_template_for_string_contents_names_the_row(tmp_path, qwen_vl):
    # a text model's template (`+ message['content']`) given a vision model's content lists: was a bare TypeError
    text_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                     "{% endfor %}<|im_start|>assistant\\n")
    path = _jsonl(tmp_path / "s.jsonl", [{"prompt": [{"role": "user", "content": "Hi."}], "answer": "1"}])
    with pytest.raises(DataError, match=r"row 0, field 'prompt': data.chat_template failed .*string contents"):
        RLDataset(path, DataConfig(chat_template=text_template), qwen_vl)


def test_csv_fields_with_line_breaks_past_the_first_block(tmp_path):
    # pyarrow reads a CSV in blocks (1 MB) and, unless told, splits them at line breaks inside quotes
    import csv

    from rllava.data.rows import load_rows

    path = tmp_path / "q.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "answer"])
        writer.writerows([f"Question {i}\nsecond line, with a comma", f"{i:03d}"] for i in range(40000))
    rows = load_rows(str(path))
    assert len(rows) == 40000 and rows[-1] == {"prompt": "Question 39999\nsecond line, with a comma", "answer": "39999"}
