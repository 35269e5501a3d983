"""Reward review: policy text that made the answer readers backtrack for minutes, and math's hedging fallback."""
from __future__ import annotations

import time

import pytest

from rllava.rewards import RewardFunction
from rllava.rewards.boxes import iou_reward, parse_boxes
from rllava.rewards.choice import choice_reward
from rllava.rewards.math_answer import _NUMBER_WITH_UNIT, math_reward


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def test_box_parsing_is_fast_on_long_runs_of_spaces():
    # Five numbers in an unclosed bracket with 200 spaces between them: ~50 s before (k^4 backtracking), ms now.
    text = "[1" + (" " * 200 + "1") * 4 + " x"
    assert _seconds(parse_boxes, text) < 2.0
    assert parse_boxes(text) == []
    # The separators it reads are unchanged: commas, spaces, both.
    assert parse_boxes("[1 ,  2,3   4] (5,\n6 7 ,8)") == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    assert parse_boxes("[1,,2,3,4]") == []
    assert iou_reward("[0  0  10  10]", "[0, 0, 10, 10]")["overall"] == 1.0


def test_choice_is_fast_on_a_long_run_of_spaces():
    # "answer is" then 20000 spaces: ~25 s before (k^2), ms now.
    text = "The answer is" + " " * 20000 + "x"
    assert _seconds(choice_reward, text, "B") < 2.0
    assert choice_reward("The answer is   :   B", "B")["overall"] == 1.0
    assert choice_reward("The answer is: (B).", "B")["overall"] == 1.0
    assert choice_reward("The correct option is C", "C")["overall"] == 1.0


def test_number_with_unit_is_fast_on_a_long_run_of_spaces():
    # The whole response is the final answer when it has no tags: ~100 s before (k^3), ms now.
    text = "5 cm" + " " * 3000 + "x"
    assert _seconds(_NUMBER_WITH_UNIT.match, text) < 2.0
    assert _NUMBER_WITH_UNIT.match(text) is None
    for written in ("12 cm^2", "12 cm ^ {2} .", "3 square meters", "7 cm.", "4 m²"):
        assert _NUMBER_WITH_UNIT.match(written), written


def test_math_pays_a_stated_answer_not_a_second_number_after_it():
    # The last-number fallback is for prose math-verify misreads, not a second chance for a hedge.
    assert math_reward("The answer is 4, not 3", "4")["overall"] == 1.0
    assert math_reward("The answer is 4, not 3", "3")["overall"] == 0.0
    assert math_reward("3 or 4", "4")["overall"] == 0.0
    # Prose it misreads still gets its last number.
    assert math_reward("She has 3 apples and buys 4 more, so she has 7 apples", "7")["overall"] == 1.0
    assert math_reward("x = 5, so 2x = 10", "10")["overall"] == 1.0
    assert math_reward("It takes 2 bolts of blue and 2/2 = 1 bolt of white, so 2 + 1 = 3 bolts", "3")["overall"] == 1.0


def test_choice_reads_a_letter_in_markdown_bold():
    # Instruct models bold their pick; "The correct answer is **B**." scored 0 before.
    choices = ["3 cm", "4 cm", "5 cm"]
    for response in ("The correct answer is **B**.", "Answer: **B**", "**B. 4 cm**", "<answer>**B**</answer>",
                     "**4 cm**"):
        assert choice_reward(response, "B", choices=choices)["overall"] == 1.0, response
    assert choice_reward("The correct answer is **B**.", "A", choices=choices)["overall"] == 0.0
    assert choice_reward("**A** or **B**", "B", choices=choices)["overall"] == 0.0  # still a hedge


def test_a_hybrid_thinking_judge_is_read_after_an_empty_think_block(tiny_model_factory, tmp_path):
    """A Qwen3-style template opens the judge's turn with "<think>" unless told not to think; the verdict must be
    read where the judge writes it, after the closed think block."""
    import shutil

    import torch

    from rllava.config import RewardConfig
    from rllava.roles.judge import JudgeModel

    path = tmp_path / "qwen3-like-judge"
    shutil.copytree(tiny_model_factory("qwen2"), path)
    template = (path / "chat_template.jinja").read_text()
    opening = '{{- "<|im_start|>assistant\\n" -}}'
    assert template.endswith(opening + "{%- endif -%}")
    # Qwen3's own generation prompt: an empty think block when enable_thinking is false.
    (path / "chat_template.jinja").write_text(template.replace(
        opening, opening + '{%- if enable_thinking is defined and enable_thinking is false -%}'
                           '{{- "<think>\\n\\n</think>\\n\\n" -}}{%- endif -%}'))
    judge = JudgeModel(RewardConfig(functions={}, model=str(path), judge_labels={"1": 1.0, "0": 0.0},
                                    judge_template="Is {{ response }} {{ answer }}? 1 or 0."), "cpu")
    text = judge.text("How many?", "3", {"answer": "3"})
    assert text.endswith("Is 3 3? 1 or 0.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = judge.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    p = torch.softmax(judge.model(input_ids=ids).logits[0, -1].double(), -1)[judge.label_ids]
    assert judge.score(["How many?"], ["3"], [{"answer": "3"}]) == pytest.approx([float(p[0] / p.sum())], abs=1e-5)


def test_a_box_truth_that_is_not_json_names_its_value():
    # Was "JSONDecodeError: Extra data: line 1 column 3 (char 2)", in the run's warning and in `rllava check`.
    with pytest.raises(ValueError, match=r"box ground truth must be a JSON list, got '10,10,50,50'"):
        iou_reward("[10, 10, 50, 50]", "10,10,50,50")
    score, info, failures = RewardFunction({"iou": 1.0}).score_one("[10, 10, 50, 50]", {"answer": "(10, 10, 50, 50)"})
    assert (score, info["accuracy"]) == (0.0, 0.0)
    assert failures == [("iou", "ValueError: box ground truth must be a JSON list, got '(10, 10, 50, 50)'")]


def test_a_sequence_classifier_is_refused_as_a_judge(tmp_path):
    """Its checkpoint has a score head instead of the LM head: a judge would read verdicts off a random (or
    embedding-tied) head, with nothing but a load report to say so."""
    from transformers import AutoModelForSequenceClassification

    from rllava.config import ConfigError, RewardConfig
    from rllava.models.tiny import tiny_config
    from rllava.roles.reward_model import load_reward_model, reward_model_type

    config, tok = tiny_config("qwen2")
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert reward_model_type(RewardConfig(functions={}, model=str(tmp_path))) == "classifier"
    cfg = RewardConfig(functions={}, model=str(tmp_path), model_type="judge", judge_labels={"1": 1.0, "0": 0.0})
    with pytest.raises(ConfigError, match=r"is a Qwen2ForSequenceClassification.*reward.model_type=classifier"):
        load_reward_model(cfg, "cpu")


def test_a_reward_file_that_failed_to_import_is_read_again(tmp_path):
    """A file whose import raised left its half-run module cached: the next load in the process (a notebook, a
    sweep, after the fix) said the file "has no function" instead of importing it again."""
    from rllava.rewards import resolve_reward

    path = tmp_path / "my_reward.py"
    path.write_text("import not_a_module_anywhere\n\ndef fn(response, answer, **meta):\n    return 1.0\n")
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="not_a_module_anywhere"):
            resolve_reward(f"{path}:fn")
    path.write_text("def fn(response, answer, **meta):\n    return 0.25\n")
    assert resolve_reward(f"{path}:fn")("x", "y") == 0.25


def test_math_reads_money_and_counted_things():
    # "\$" is LaTeX's dollar sign, not a math delimiter: MATH's golds ("\$1.17") matched nothing but themselves.
    assert math_reward(r"\boxed{1.17}", r"\$1.17")["overall"] == 1.0
    assert math_reward(r"\boxed{\$1.17}", "1.17")["overall"] == 1.0
    assert math_reward(r"\boxed{\$18.00}", "18")["overall"] == 1.0
    assert math_reward(r"\boxed{\$1.17}", "1.18")["overall"] == 0.0
    # A number and the words naming what it counts: "18 apples" passed, "18 eggs" and "18 dollars" did not.
    for written in (r"\boxed{18 dollars}", "<answer>18 eggs</answer>", "<answer>18 eggs per day.</answer>",
                    "<answer>18 apples</answer>", "<answer>12 cm^2</answer>"):
        assert math_reward(written, "18" if "12" not in written else "12")["overall"] == 1.0, written
    assert math_reward(r"\boxed{18 dollars}", "19")["overall"] == 0.0
    # Words that change the number are not a unit.
    assert math_reward("<answer>3 hundred</answer>", "3")["overall"] == 0.0
    assert math_reward("<answer>2 thirds</answer>", "2")["overall"] == 0.0


def test_exact_match_reads_an_answer_in_markdown_bold():
    from rllava.rewards.count import exact_match_reward

    assert exact_match_reward("<answer>**Red Square**</answer>", "red square")["overall"] == 1.0
    assert exact_match_reward("**cat.**", "cat")["overall"] == 1.0
    assert exact_match_reward("**dog**", "cat")["overall"] == 0.0


def test_boxes_read_qwen2_vl_point_pairs():
    # Qwen2-VL grounds as <|box_start|>(x1,y1),(x2,y2)<|box_end|> in 0-1000 coordinates: read as no box before.
    response = "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"
    assert parse_boxes(response) == [(100.0, 200.0, 300.0, 400.0)]
    assert iou_reward(response, "[20, 40, 60, 80]", box_frame="norm1000", image_sizes=[[200, 200]])["overall"] == 1.0
    # In order with the bracketed form, corners put in order; a lone point is no box.
    assert parse_boxes("[1, 2, 3, 4] then (30, 40) (10,20) and (5,6)") == [(1.0, 2.0, 3.0, 4.0), (10.0, 20.0, 30.0, 40.0)]
    start = time.perf_counter()  # no backtracking blow-up on long runs of spaces between points
    parse_boxes("(1,2)" + " " * 50_000 + "(3,4")
    parse_boxes("(1,2) ," * 5_000)
    assert time.perf_counter() - start < 1.0
