"""Reward functions on tricky strings, Hungarian matching, and the weighted combination."""
from __future__ import annotations

import itertools
import logging
import math
import random

import pytest

from rllava.config import ConfigError
from rllava.registry import UnknownNameError
from rllava.rewards import REWARDS, RewardFunction
from rllava.rewards.boxes import detection_reward, iou, iou_reward, parse_boxes, parse_gold_boxes
from rllava.rewards.choice import choice_reward
from rllava.rewards.count import count_reward, exact_match_reward, number_format_reward
from rllava.rewards.extract import answer_tag, final_answer, last_boxed, last_integer, last_number_text
from rllava.rewards.format_tags import answer_tag_reward, format_reward, think_boxed_reward
from rllava.rewards.matching import hungarian
from rllava.rewards.math_answer import math_reward


def test_builtins_are_registered():
    assert {"math", "format", "answer_tag", "count", "number_format", "iou", "detection",
            "exact_match"} <= set(REWARDS.names())


def test_extraction():
    assert answer_tag("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert answer_tag("<answer>unclosed") is None
    assert last_boxed(r"\boxed{1} and \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # unbalanced braces
    # MATH's brace-less form and \fbox: the last box of either kind
    assert last_boxed(r"so \boxed{1}, then $\boxed 7$.") == "7" and last_boxed(r"\fbox{3} and \boxed {4}") == "4"
    assert last_boxed(r"\boxedfoo 3") is None and last_boxed("ends in \\boxed ") is None
    assert final_answer(r"<answer>so \boxed{7}</answer> \boxed{8}") == "7"  # a box inside the tags wins
    assert final_answer(r"work \boxed{8}") == "8"
    assert last_number_text("costs 1,000.5 or -3") == "-3"
    assert last_number_text("costs 1,234,567.25") == "1234567.25"  # as written: no rounding
    assert last_number_text("no digits") is None
    assert last_integer("I see three circles") == 3
    assert last_integer("maybe 2, final: 4 objects") == 4
    assert last_integer("3.0") == 3
    assert last_integer("3.5") is None
    assert last_integer("someone") is None  # "one" inside a word is not a number
    assert last_integer("There are twenty-one circles") == 21
    assert last_integer("forty two") == 2  # two words: the last one
    assert last_integer("a five-sided shape") is None
    assert last_integer("three five-pointed stars") == 3  # a compound adjective is not the count
    assert last_integer("I see five-ish") == 5 and last_integer("twenty-odd dots") == 20  # approximately
    assert last_integer("three-four circles") == 4  # a range: the last
    assert last_integer("about 1e999") is None  # not finite: no number, not an OverflowError


@pytest.mark.parametrize("response,answer,expected", [
    (r"<answer>\frac{1}{2}</answer>", "0.5", 1.0),
    ("<answer> 0.5 </answer>", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{3}{4}}", "0.75", 1.0),
    ("The answer is 5 cm", "5", 1.0),
    ("<answer>12 cm^2</answer>", "12", 1.0),
    ("<answer>90°</answer>", "90", 1.0),
    ("<answer>1,000</answer>", "1000", 1.0),
    (r"<answer>25\pi</answer>", r"25\pi", 1.0),
    ("<answer>78.54</answer>", r"25\pi", 0.0),  # a rounded decimal is not the exact value
    ("<answer>5+1</answer>", "5", 0.0),  # the unit stripping must not accept a sum
    ("<answer>6</answer>", "7", 0.0),
    ("I think 4 and then 7", "7", 1.0),  # no tags: the last number
    ("The area is 1234567 square units", "1234567", 1.0),  # the last number as written, not rounded
    ("It grew to 2,500,001 people", "2500001", 1.0),
    ("The ratio comes to 3.1415926", "3.14159", 0.0),
    ("about 12345678901234567 grains", "12345678901234567", 1.0), ("about 1,234,567 people", "1234567", 1.0),
    # Scientific notation by its value (math-verify alone reads a lower-case 1e3 as 1*e*3).
    ("we get 1e3", "1000", 1.0), ("the rate is 2.50e-3", "0.0025", 1.0), ("about 6.02e23 atoms", "6.02e23", 1.0),
    ("<answer>6.02e23</answer>", "602000000000000000000000", 1.0), ("<answer>1000</answer>", "1e3", 1.0),
    ("we get 2e3", "1000", 0.0), ("about 1e999", "1", 0.0),
    ("<answer>4</answer> and later 5", "4", 1.0),  # the tags win over later numbers
    ("<answer>3", "3", 1.0),  # unclosed tag: falls back to the last number
    ("", "3", 0.0),
])
def test_math_reward(response, answer, expected):
    out = math_reward(response, answer)
    assert out == {"overall": expected, "accuracy": expected}


@pytest.mark.parametrize("response,expected", [
    ("<think>count them</think><answer>3</answer>", 1.0),
    ("  <think>a\nb</think>\n<answer> 3 </answer>\n", 1.0),
    ("<answer>3</answer>", 0.0),  # no think block
    ("<think>x</think><answer>3</answer> trailing text", 0.0),
    ("<think>x</think><answer>  </answer>", 0.0),  # empty answer
    ("<think>x<think>y</think></think><answer>3</answer>", 0.0),  # nested tags
    ("<think>x</think><answer>3</answer><answer>4</answer>", 0.0),
    ("<think>x</think><answer>3", 0.0),
])
def test_format_reward(response, expected):
    assert format_reward(response, "") == expected


@pytest.mark.parametrize("response,expected", [
    ("Counting... <answer>3</answer>", 1.0),
    ("<answer>3</answer><answer>4</answer>", 0.0),
    ("<answer></answer>", 0.0),
    ("<answer>3", 0.0),
    ("3", 0.0),
])
def test_answer_tag_reward(response, expected):
    assert answer_tag_reward(response, "") == expected


@pytest.mark.parametrize("response,expected", [
    ("<think>area = 6 * 4 / 2</think> The area is \\boxed{12}.", 1.0),
    ("  <think>a\nb</think>\n\\boxed{\\frac{1}{2}}", 1.0),
    ("<think>x</think>\\boxed{}", 0.0),  # empty box
    ("<think>x</think> the answer is 12", 0.0),  # no box
    ("\\boxed{12}", 0.0),  # no think block
    ("\\boxed{12}<think>x</think>", 0.0),  # the box must come after the thinking
    ("<think>x</think><think>y</think>\\boxed{1}", 0.0),
    ("<think>x<think>y</think></think>\\boxed{1}", 0.0),
    ("<think>x</think>\\boxed{12", 0.0),  # unclosed
])
def test_think_boxed_reward(response, expected):
    assert think_boxed_reward(response, "") == expected


@pytest.mark.parametrize("response,answer,expected", [
    ("There are 3 red circles.", "3", 1.0),
    ("<answer> three </answer>", "3", 1.0),
    ("<answer>3.0</answer>", "3", 1.0),
    ("<answer>2</answer> no wait, 3", "2", 1.0),
    ("\\boxed{0}", "0", 1.0),
    ("<answer>3.5</answer>", "3", 0.0),
    ("none", "0", 0.0),
    ("4", " 4 ", 1.0),
    ("There are twenty-one circles.", "21", 1.0),
    ("There are twenty-one circles.", "1", 0.0),
    ("I see five-ish", "5", 1.0), ("There are three five-pointed stars.", "3", 1.0),
    ("I see 1e999 dots", "3", 0.0),
])
def test_count_reward(response, answer, expected):
    assert count_reward(response, answer)["accuracy"] == expected


def test_count_reward_rejects_non_integer_truth():
    with pytest.raises(ValueError, match="not an integer"):
        count_reward("3", "three")
    with pytest.raises(ValueError, match="not an integer"):
        count_reward("3", "3.7")  # never cut to 3


def test_number_format_reward():
    assert number_format_reward("<answer>7</answer>") == 1.0
    assert number_format_reward("I see seven") == 1.0
    assert number_format_reward("<answer>many</answer> 3") == 0.0  # the tags decide
    assert number_format_reward("2.5") == 0.0


CHOICES = ["3 cm", "4 cm", "5 cm", "6 cm"]


@pytest.mark.parametrize("response,expected", [
    ("B", 1.0), ("(b)", 1.0), ("B.", 1.0), ("<answer>B</answer>", 1.0), ("\\boxed{B}", 1.0),
    ("<answer>(B) 4 cm</answer>", 1.0), ("B. 4 cm", 1.0), ("The answer is B.", 1.0), ("ANSWER: (B)", 1.0),
    ("<answer>4 cm</answer>", 1.0),  # the option's text
    ("Option C is wrong, so the answer is B", 1.0), ("the correct option is B", 1.0),
    ("Compare (A) and (B): the answer is (B).", 1.0),  # two options named, one stated as the answer
    ("The answer is B, not A.", 1.0), ("The answer is B, since (A) is red.", 1.0),  # stated beats marked
    ("A or B", 0.0), ("(A) or (B)", 0.0),  # hedging picks nothing
    ("The answer is A or B.", 0.0), ("The answer is B or A.", 0.0), ("Answer: (B)/(C)", 0.0),
    ("The answer is A, not B.", 0.0),
    ("the answer is a triangle", 0.0),  # the article "a" is not option A
    ("The answer is B, A is wrong.", 1.0), ("The answer is (B). Answer (A) is wrong.", 1.0),  # a rejected letter
    ("Final answer B", 1.0), ("The answer is: B", 1.0),
    ("C", 0.0), ("<answer>5 cm</answer>", 0.0), ("4", 0.0), ("", 0.0),
])
def test_choice_reward(response, expected):
    assert choice_reward(response, "B", choices=CHOICES)["accuracy"] == expected
    assert choice_reward(response, "4 cm", options=CHOICES)["accuracy"] == expected  # the gold as option text


@pytest.mark.parametrize("response,gold", [
    # The pronoun "I" and the article "A" are not option letters; a sentence rejecting an option is no answer.
    ("The answer I picked is (B).", "B"), ("The final answer I got is (C).", "C"),
    ("Looking at the figure, the answer is (C), I am fairly sure.", "C"),
    ("The answer is B and I am confident about it.", "B"),
    ("The answer is (B). Answer A is wrong because it ignores friction.", "B"),
    ("After checking each option, the answer: A triangle has 3 sides, so (B).", "B"),
    ("The answer is A because it is red.", "A"), ("Answer: A since the ball falls.", "A"),  # option A itself
    ("The answer is I think (B).", "B"), ("The answer is (B), I'm sure.", "B"),
])
def test_choice_reward_reads_pronouns_articles_and_rejections(response, gold):
    assert choice_reward(response, gold)["accuracy"] == 1.0
    wrong = "D" if gold != "D" else "A"
    assert choice_reward(response, wrong)["accuracy"] == 0.0


def test_choice_reward_gold_forms():
    assert choice_reward("D", "(d)")["overall"] == 1.0  # no choices listed: letters only
    assert choice_reward("6 cm", "D")["overall"] == 0.0  # text needs the list
    with pytest.raises(ValueError, match=r"answer_template='\{\{ \"ABCDEFGHIJ\"\[answer\] \}\}'"):
        choice_reward("B", "1", choices=CHOICES)  # an index: say how to make it a letter
    with pytest.raises(ValueError, match="neither an option letter nor one of the choices"):
        choice_reward("B", "7 cm", choices=CHOICES)
    # Options stored as text (some copies of ScienceQA): parsed as the list they spell.
    assert choice_reward("<answer>4 cm</answer>", "B", choices=str(CHOICES))["overall"] == 1.0
    assert choice_reward("<answer>4 cm</answer>", "B", choices='["3 cm", "4 cm"]')["overall"] == 1.0
    with pytest.raises(ValueError, match="is text but not a list"):
        choice_reward("B", "B", choices="3 cm, 4 cm")
    from rllava.data.template import RowTemplate

    letter = RowTemplate('{{ "ABCDEFGHIJ"[answer] }}', "data.answer_template").render({"answer": 1, "choices": CHOICES})
    assert choice_reward("<answer>4 cm</answer>", letter, choices=CHOICES)["overall"] == 1.0  # ScienceQA's int index
    # The template's `as_list` filter reads the same text-stored lists; a row it cannot read is a template error.
    from rllava.data.template import TemplateError

    options = RowTemplate("{% for c in choices | as_list %}({{ 'ABCD'[loop.index0] }}) {{ c }} {% endfor %}", "t")
    assert options.render({"choices": str(CHOICES[:2])}) == options.render({"choices": CHOICES[:2]}) == "(A) 3 cm (B) 4 cm "
    with pytest.raises(TemplateError, match="is text but not a list"):
        options.render({"choices": "3 cm, 4 cm"})
    # The choice task's own template (and examples/choice_grpo.yaml's) reads both forms too.
    from rllava.tasks.choice import OPTIONS_TEMPLATE

    task = RowTemplate(OPTIONS_TEMPLATE, "t")
    assert task.render({"prompt": "Q?", "choices": str(CHOICES)}) == task.render({"prompt": "Q?", "choices": CHOICES})


def test_exact_match_reward():
    assert exact_match_reward("<answer> ab3k. </answer>", "AB3K")["overall"] == 1.0
    assert exact_match_reward('"AB3K"', "AB3K")["overall"] == 1.0
    assert exact_match_reward("The code is AB3K", "AB3K")["overall"] == 0.0


def test_box_parsing():
    assert parse_boxes("<answer>[[10, 10, 20, 20], (30 40 50 60)]</answer>") == [(10, 10, 20, 20), (30, 40, 50, 60)]
    assert parse_boxes("box: [ 20.5 ,10, 0, 0 ]") == [(0, 0, 20.5, 10)]  # corners put in order
    assert parse_boxes("[1, 2, 3]") == []
    assert parse_boxes("<answer>none</answer> [1,2,3,4]") == []  # the answer block decides
    assert parse_gold_boxes("[1, 2, 3, 4]") == [(1, 2, 3, 4)]
    assert parse_gold_boxes("[]") == []
    with pytest.raises(ValueError):
        parse_gold_boxes('{"x": 1}')


def test_iou_reward_hand_values():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou_reward("<answer>[0,0,10,10]</answer>", "[5, 0, 15, 10]") == {"overall": pytest.approx(1 / 3),
                                                                           "accuracy": 0.0}
    assert iou_reward("It is at (10, 10, 0, 0).", "[0, 0, 10, 10]") == {"overall": 1.0, "accuracy": 1.0}
    # 2 of 3 columns overlap: IoU 80/120 = 0.67 >= 0.5
    assert iou_reward("[0, 0, 10, 8]", "[0, 0, 10, 12]")["accuracy"] == 1.0
    assert iou_reward("I don't know", "[0, 0, 10, 10]") == {"overall": 0.0, "accuracy": 0.0}


def test_detection_reward_hand_values():
    gold = "[[10, 10, 20, 20], [30, 40, 50, 61]]"
    pred = "<answer>[[30, 40, 50, 60], [10, 10, 20, 20], [0, 0, 1, 1]]</answer>"
    out = detection_reward(pred, gold)
    # matches: exact (IoU 1) and 400/420; one extra box. mean over max(3, 2) = 3 slots.
    assert out["overall"] == pytest.approx((1 + 400 / 420) / 3)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0
    assert out["f1"] == pytest.approx(0.8) and out["accuracy"] == 0.0
    perfect = detection_reward("[[30,40,50,61],[10,10,20,20]]", gold)
    assert perfect["overall"] == 1.0 and perfect["accuracy"] == 1.0
    assert detection_reward("<answer>[]</answer>", "[]")["overall"] == 1.0
    assert detection_reward("[[0,0,5,5]]", "[]")["overall"] == 0.0
    assert detection_reward("nothing", gold) == {"overall": 0.0, "accuracy": 0.0, "f1": 0.0, "precision": 0.0,
                                                 "recall": 0.0, "mean_iou": 0.0}


# A 640x480 image that the model saw at 448x336 (Qwen2.5-VL writes boxes in that frame).
SIZES = {"image_sizes": [[640, 480]], "input_image_sizes": [[448, 336]]}


@pytest.mark.parametrize("frame, written", [
    ("pixels", "[160, 120, 320, 240]"),
    ("input", "[112, 84, 224, 168]"),  # x 640/448 = 10/7, y 480/336 = 10/7
    ("norm1000", "(250, 250, 500, 500)"),
    ("norm1", "[0.25, 0.25, 0.5, 0.5]"),
])
def test_box_frames_map_predictions_to_the_image_pixels(frame, written):
    gold = "[160, 120, 320, 240]"
    assert iou_reward(f"<answer>{written}</answer>", gold, box_frame=frame, **SIZES)["overall"] == pytest.approx(1.0)
    two = f"[{gold}, [0, 0, 64, 48]]"
    other = {"pixels": "[0,0,64,48]", "input": "[0,0,44.8,33.6]", "norm1000": "[0,0,100,100]", "norm1": "[0,0,0.1,0.1]"}
    out = detection_reward(f"<answer>{written} {other[frame]}</answer>", two, box_frame=frame, **SIZES)
    assert out["f1"] == 1.0 and out["overall"] == pytest.approx(1.0)
    if frame != "pixels":  # read as pixels instead, the same text misses
        assert iou_reward(f"<answer>{written}</answer>", gold, **SIZES)["overall"] < 0.5


def test_box_frames_need_the_sizes_and_a_known_name():
    with pytest.raises(ValueError, match="box_frame=input needs the row's image sizes"):
        iou_reward("[1, 2, 3, 4]", "[1, 2, 3, 4]", box_frame="input", image_sizes=[[10, 10]])
    with pytest.raises(ValueError, match="not one of"):
        iou_reward("[1, 2, 3, 4]", "[1, 2, 3, 4]", box_frame="normalized", **SIZES)
    assert iou_reward("no box", "[1, 2, 3, 4]", box_frame="input")["overall"] == 0.0  # nothing to map


def test_reward_kwargs_reach_each_function_over_the_row_fields():
    response, answer = "<answer>[0, 0, 10, 10] [50, 50, 60, 60]</answer>", "[[0, 0, 10, 12], [50, 50, 60, 60]]"
    row = {"answer": answer, "iou_threshold": 0.5}
    plain = RewardFunction({"detection": 1.0})
    strict = RewardFunction({"detection": 1.0}, kwargs={"detection": {"iou_threshold": 0.9}})  # 100/120 < 0.9
    assert plain.score_one(response, row)[1]["detection/f1"] == 1.0
    assert strict.score_one(response, row)[1]["detection/f1"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"reward.kwargs names \['iou'\]"):
        RewardFunction({"detection": 1.0}, kwargs={"iou": {"box_frame": "input"}})
    from rllava.config import load_config

    with pytest.raises(ConfigError, match="reward.kwargs names"):
        load_config(None, ["reward.functions={count: 1.0}", "reward.kwargs={iou: {box_frame: input}}"])


def test_detection_matching_is_one_to_one_and_optimal():
    # Greedy (best IoU first) pairs pred 1 with gold 1 (IoU 7/13), leaving pred 0 with gold 0 (IoU 0):
    # total 0.54. The optimal assignment crosses them: 4/8 + 6/13 = 0.96.
    gold = "[[7, 0, 14, 10], [13, 0, 21, 10]]"
    pred = "[[17, 0, 21, 10], [8, 0, 20, 10]]"
    out = detection_reward(pred, gold)
    assert out["overall"] == pytest.approx((4 / 8 + 6 / 13) / 2)
    assert out["f1"] == pytest.approx(0.5)  # only the IoU-0.5 match counts as a true positive


def test_detection_true_positives_are_the_most_pairs_over_the_threshold():
    # The total-IoU matching pairs pred 0 with gold 0 (0.782) and pred 1 with gold 1 (0.412): one true positive.
    # Crossed, both pairs pass 0.5 (0.526, 0.590): two, so every box is found.
    gold = [(15, 4, 28, 20), (16, 3, 36, 18)]
    pred = [(15, 2, 29, 21), (19, 4, 29, 22)]
    out = detection_reward(str([list(b) for b in pred]), str([list(b) for b in gold]))
    assert (out["f1"], out["precision"], out["recall"], out["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert out["mean_iou"] == pytest.approx((iou(pred[0], gold[0]) + iou(pred[1], gold[1])) / 2)  # total-IoU pairs
    rng = random.Random(0)  # and against brute force over small random sets
    for _ in range(300):
        boxes = [(x, y, x + rng.randint(4, 20), y + rng.randint(4, 20))
                 for x, y in ((rng.randint(0, 20), rng.randint(0, 20)) for _ in range(rng.randint(2, 7)))]
        k = rng.randint(1, len(boxes) - 1)
        pred, gold = boxes[:k], boxes[k:]
        small, large = sorted((pred, gold), key=len)
        best = max(sum(iou(a, b) >= 0.5 for a, b in zip(small, perm)) for perm in itertools.permutations(large, len(small)))
        out = detection_reward(str([list(b) for b in pred]), str([list(b) for b in gold]))
        assert out["recall"] * len(gold) == pytest.approx(best)


def test_hungarian_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n, m = rng.randint(1, 5), rng.randint(1, 5)
        cost = [[rng.random() for _ in range(m)] for _ in range(n)]
        pairs = hungarian(cost)
        k = min(n, m)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs) == k
        best = min(sum(cost[i][j] for i, j in zip(rows, cols))
                   for rows in itertools.combinations(range(n), k) for cols in itertools.permutations(range(m), k))
        assert sum(cost[i][j] for i, j in pairs) == pytest.approx(best)
    assert hungarian([]) == []


# ------------------------------------------------------------------ combination


def test_reward_function_weighted_sum_and_keys():
    fn = RewardFunction({"count": 1.0, "format": 0.5})
    scores, infos, n_errors = fn(["<think>hm</think><answer>3</answer>", "four", "<answer>2</answer>"],
                                 [{"answer": "3"}, {"answer": "4"}, {"answer": "5"}])
    assert scores == [1.5, 1.0, 0.0]
    assert n_errors == 0
    assert infos[0] == {"count": 1.0, "accuracy": 1.0, "format": 1.0, "overall": 1.5}
    assert infos[2]["accuracy"] == 0.0


def test_reward_function_logs_extra_keys_per_component():
    fn = RewardFunction({"detection": 1.0})
    _, infos, _ = fn(["[[0,0,10,10]]"], [{"answer": "[[0,0,10,10]]", "index": 3, "images": ["x.png"]}])
    assert infos[0]["detection"] == 1.0 and infos[0]["detection/f1"] == 1.0 and infos[0]["accuracy"] == 1.0


def test_reward_function_user_file_and_unknown_name(tmp_path):
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def length_bonus(response, answer, **meta):\n"
                      "    return {'overall': len(response) / 10, 'accuracy': float(response == answer)}\n")
    fn = RewardFunction({f"{plugin}:length_bonus": 2.0, "count": 1.0})
    scores, infos, _ = fn(["12345"], [{"answer": "12345"}])
    assert scores == [pytest.approx(2.0 * 0.5 + 1.0)]  # weighted: 2 x 5/10, plus count (12345 == 12345)
    assert infos[0]["accuracy"] == 1.0  # from the first component that reports it (the user's)
    with pytest.raises(UnknownNameError, match="did you mean 'count'"):
        RewardFunction({"cont": 1.0})
    with pytest.raises(ConfigError, match="no function 'missing'"):
        RewardFunction({f"{plugin}:missing": 1.0})


def test_reward_function_survives_errors_and_nan(tmp_path, caplog):
    plugin = tmp_path / "bad.py"
    plugin.write_text("import math\n"
                      "def boom(response, answer, **meta):\n"
                      "    if response == 'nan':\n"
                      "        return math.nan\n"
                      "    if response == 'nodict':\n"
                      "        return {'score': 1.0}\n"
                      "    raise RuntimeError('reward exploded')\n")
    fn = RewardFunction({f"{plugin}:boom": 1.0, "count": 1.0}, on_error=-1.0)
    with caplog.at_level(logging.WARNING, logger="rllava.rewards.combine"):
        scores, infos, n_errors = fn(["3", "nan", "nodict", "x"], [{"answer": "3"}] * 4)
    assert n_errors == 4
    assert scores == [-1.0 + 1.0, -1.0 + 0.0, -1.0 + 0.0, -1.0 + 0.0]
    assert all(math.isfinite(s) for s in scores)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "reward exploded" in messages[0]  # logged once per component
    fn = RewardFunction({f"{plugin}:boom": 1.0}, on_error=0.0)
    with caplog.at_level(logging.WARNING, logger="rllava.rewards.combine"):  # the first failure names its row
        fn(["3"], [{"answer": "3", "index": 17, "data_source": "geo3k"}])
    assert "failed on row 17 of geo3k (scored 0.0" in caplog.records[-1].getMessage()
    # A failing built-in that reports accuracy still reports it (as 0), so accuracy means stay unbiased.
    scores, infos, n_errors = RewardFunction({"count": 1.0}, on_error=0.0)(["3"], [{"answer": "x"}])
    assert n_errors == 1 and infos[0]["accuracy"] == 0.0 and scores == [0.0]


def test_reward_function_length_mismatch():
    with pytest.raises(ValueError, match="2 responses but 1"):
        RewardFunction({"count": 1.0})(["1", "2"], [{"answer": "1"}])


def _episodes(responses: list[str], answer: str, source: str = "") -> list:
    from rllava.data.types import Episode, Prompt

    prompt = Prompt(input_ids=[1], meta={"answer": answer, "data_source": source})
    return [Episode(prompt, response_text=r) for r in responses]


def test_accuracy_key_names_a_components_key(tmp_path):
    from rllava.config import RewardConfig
    from rllava.roles.reward import RewardScorer

    plugin = tmp_path / "graded.py"
    plugin.write_text("def graded(response, answer, **meta):\n"
                      "    return {'overall': 0.5, 'correct': float(response == answer)}\n")
    scorer = RewardScorer(RewardConfig(functions={f"{plugin}:graded": 1.0}, accuracy_key="correct"))
    episodes = _episodes(["3", "4", "3", "5"], "3")
    metrics = scorer.score(episodes)
    # What evaluation and drop_solved read: the configured key, not the score (0.5 for every row).
    assert [e.reward_info.get(scorer.accuracy_key, e.reward) for e in episodes] == [1.0, 0.0, 1.0, 0.0]
    assert metrics["reward/correct"] == 0.5 and metrics[f"reward/{plugin}:graded/correct"] == 0.5


def test_a_failed_row_counts_as_incorrect(tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text("def flaky(response, answer, **meta):\n"
                      "    if response == 'boom':\n"
                      "        raise RuntimeError('parser bug')\n"
                      "    return {'overall': 1.0, 'accuracy': float(response == answer)}\n")
    fn = RewardFunction({f"{plugin}:flaky": 1.0}, on_error=-1.0)
    # The failing row comes first: before the function has ever said it reports accuracy.
    scores, infos, n_errors = fn(["boom", "3", "3", "4"], [{"answer": "3"}] * 4)
    assert n_errors == 1 and scores[0] == -1.0
    accuracy = [info["accuracy"] for info in infos]  # every row has one: 2 correct of 4
    assert accuracy == [0.0, 1.0, 1.0, 0.0] and sum(accuracy) / len(accuracy) == 0.5
    # A later failure of a function known to report accuracy: 0 too, not the score (on_error).
    assert fn(["boom"], [{"answer": "3"}])[1][0]["accuracy"] == 0.0
