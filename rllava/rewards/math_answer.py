"""`math`: answer equivalence checked symbolically with math-verify (\\frac{1}{2} == 0.5, "5 cm" == 5)."""
from __future__ import annotations

import re
import threading
from decimal import Decimal

from rllava.rewards.extract import final_answer, last_number_text
from rllava.rewards.registry import REWARDS

# "12 cm^2" / "3 square meters" / "18 dollars" / "18 eggs per day": a number followed by a unit or by words, which
# math-verify can misread as a product (18*E*g*g*s). Words of 3 letters or more ("2 pi" is 2*pi), none that changes
# the number ("3 hundred", "2 thirds", "7 minus ...").
_SCALE = (r"(?!(?:hundreds?|thousands?|millions?|billions?|trillions?|dozens?|squared|cubed|half|halves|thirds|quarters"
          r"|fourths|fifths|sixths|sevenths|eighths|ninths|tenths|hundredths|thousandths|plus|minus|divided|over)\b)")
_WORDS = _SCALE + r"[a-z]{3,}(?:\s+" + _SCALE + r"[a-z]{3,})*"
_NUMBER_WITH_UNIT = re.compile(
    r"^\s*([-+]?\d[\d,]*(?:\.\d+)?)\s*(?:(?:square\s+|sq\.?\s*)?"
    r"(?:cm|mm|km|m|in|inch(?:es)?|ft|feet|units?|meters?|centimeters?)(?:\s*(?:\^\s*\{?[23]\}?|²|³))?|" + _WORDS
    + r")(?:\s*\.)?\s*$",
    re.IGNORECASE)  # each run of spaces read one way: "\s*X?\s*" backtracks k^3 times on a long run of spaces


def _timeout() -> int | None:
    # math-verify's timeout uses signal.alarm, which only works on the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    from math_verify import parse  # imported lazily: its first import pulls in sympy

    return parse(text, parsing_timeout=_timeout())


_DELIMITER = re.compile(r"(?<!\\)\$")  # a math-mode $, not the escaped dollar sign \$ of "\$1.17"


def _as_latex(text: str) -> str:
    """Wrap a bare answer in $...$ so math-verify reads it as LaTeX (it already handles plain numbers)."""
    return text if _DELIMITER.search(text) or "\\boxed" in text else f"${text}$"


# A plain number in scientific notation, "1e3", "-2.50E-3"; its exponent at most 3 digits (see _plain_decimal).
_E_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d{1,3}\s*")


def _plain_decimal(text: str) -> str:
    """A number in scientific notation as a plain decimal ("1e3": "1000"); other text as it is. math-verify reads
    a lower-case "1e3" as the product 1*e*3 (Euler's e), so a number written this way would never equal its
    value. The exponent is capped at 3 digits so that "1e999" makes a 1000-digit string, not an unbounded one."""
    return format(Decimal(text.strip()), "f") if _E_NUMBER.fullmatch(text) else text


def math_equal(pred: str, gold: str) -> bool:
    """True when `pred` and `gold` parse to equal values or expressions (a number in scientific notation also
    as its plain decimal: "1e3" == "1000")."""
    plain = _plain_decimal(pred), _plain_decimal(gold)
    return _math_equal(pred, gold) or (plain != (pred, gold) and _math_equal(*plain))


def _math_equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed = _parse(_as_latex(gold)) or _parse(gold)
    if not gold_parsed:
        return pred.strip() == gold.strip()
    unit = _NUMBER_WITH_UNIT.match(pred)
    if unit:
        pred = unit.group(1).replace(",", "")
    pred_parsed = _parse(_as_latex(pred)) or _parse(pred)
    return bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=_timeout())


def _misread(text: str) -> bool:
    """True when math-verify finds no value in `text`, or one with letters in it: prose read as a product of
    letters ("He has 5 apples": h*E*h*a*s*5), not a stated answer."""
    parsed = _parse(_as_latex(text)) or _parse(text)
    return not parsed or getattr(parsed[0], "free_symbols", None) != set()


@REWARDS.register("math", accuracy=True)
def math_reward(response: str, answer: str, **meta) -> dict[str, float]:
    """1 if the final answer (<answer> tags, then \\boxed{}, then the last number) equals the ground truth."""
    answer = str(answer)
    pred = final_answer(response)
    ok = math_equal(pred, answer)
    # No tags or box, and math-verify misread the prose: fall back to the last number written. Not when it read a
    # value ("The answer is 4, not 3" is 4): the last number would be a second answer, paying for hedging.
    if not ok and pred == response.strip() and _misread(response):
        number = last_number_text(response)
        ok = number is not None and math_equal(number, answer)
    return {"overall": float(ok), "accuracy": float(ok)}
