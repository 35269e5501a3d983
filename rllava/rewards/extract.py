"""Pull the final answer out of a model response: `<answer>` tags, `\\boxed{}`, or the last number."""
from __future__ import annotations

import math
import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_NUMBER_WORDS.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})


def answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` pair (stripped), or None when there is none."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched, or of MATH's brace-less `\\boxed 5`
    (the token after it); None if absent or unclosed."""
    ends = [m.end() for m in _BOXED.finditer(text)]
    if not ends:
        return None
    i = ends[-1]
    if not text.startswith("{", i):
        token = re.match(r"[^\s$]+", text[i:])
        return token.group(0) if token else None
    depth = 1
    for j in range(i + 1, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def final_answer(text: str) -> str:
    """The answer span: inside `<answer>` tags if any (then a `\\boxed{}` within them), else the last
    `\\boxed{}`, else the whole response."""
    tagged = answer_tag(text)
    if tagged is not None:
        boxed = last_boxed(tagged)
        return boxed if boxed is not None else tagged
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def last_number_text(text: str) -> str | None:
    """The last number as written, without thousands separators ("1,234,567" -> "1234567"), or None.

    Kept as text, not a float, so a long or precise number is compared digit for digit."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _word_value(word: str) -> int | None:
    """A number word ("three"), a tens-unit compound ("twenty-one"), the last of a range ("three-four" is 4) or an
    approximate number ("five-ish", "twenty-odd"); None for any other word. A number in a compound adjective
    ("five-sided", "two-headed") describes a thing, not how many there are: "three five-pointed stars" is 3."""
    first, _, second = word.partition("-")
    if not second:
        return _NUMBER_WORDS.get(word)
    if _NUMBER_WORDS.get(first, 0) >= 20 and 0 < _NUMBER_WORDS.get(second, 10) < 10:
        return _NUMBER_WORDS[first] + _NUMBER_WORDS[second]
    if first in _NUMBER_WORDS and (second in _NUMBER_WORDS or second in ("ish", "odd")):
        return _NUMBER_WORDS.get(second, _NUMBER_WORDS[first])
    return None


def last_integer(text: str) -> int | None:
    """The last number written as digits or as a word ("three", "twenty-one"); None if it is not a
    whole number."""
    tokens = re.findall(r"[A-Za-z]+(?:-[A-Za-z]+)?|" + _NUMBER.pattern, text)
    for tok in reversed(tokens):
        word = tok.lower()
        if word[:1].isalpha():
            value = _word_value(word)
            if value is not None:
                return value
            continue
        value = float(tok.replace(",", ""))
        return int(value) if math.isfinite(value) and value == int(value) else None
    return None
