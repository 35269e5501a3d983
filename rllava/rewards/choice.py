"""`choice`: multiple-choice answers (ScienceQA, MMMU, A-OKVQA style), as an option letter or the option's text.

A response that names two options without saying which is its answer ("A or B", "(A) ... (C)") scores 0:
a reward that took the first or last letter would pay for hedging.
"""
from __future__ import annotations

import re
from typing import Optional

from rllava.data.template import as_list
from rllava.rewards.count import normalize_text
from rllava.rewards.extract import final_answer
from rllava.rewards.registry import REWARDS

_ALONE = re.compile(r"\(?([A-Za-z])\)?[.:]?")  # the whole answer is one letter: "B", "(b)", "B."
_MARKED = re.compile(r"\(([A-Z])\)|(?:^|(?<=\s))([A-Z])[.:)](?=\s|$)")  # "(B)", "B.", "B:", "B)"
_REJECTED = r"(?!\s*(?:is|was)\s+(?:not|wrong|incorrect)\b)"  # "A is wrong" rejects A: it is not picked
# A capital "A" or "I" followed by a word is the article or the pronoun ("the answer: A triangle ...", "(C), I am
# sure"), not an option letter, unless the word is one an option letter takes and an article or "I" does not
# ("A or B", "A is right", "A because ...").
_LETTER = r"(?![AI]\s+(?!(?:or|and|nor|is|because|since|as)\b)[a-z])\(?([A-Z])\)?(?![A-Za-z'])" + _REJECTED
# "the answer is B", "Answer: (B)", "answer (B)", "Final answer B" (a bare letter only when it ends the response:
# not "Answer A is wrong", nor the "I" of "the answer I picked"); else "the correct option is B" (not "Option C is
# wrong"). Letters upper-case.
# ("is(?:\s*:)?", not "is\s*:?": two \s* in a row backtrack k^2 times over a long run of spaces.)
_STATED = (re.compile(r"(?i:answer)\s*(?:(?:(?i:is)(?:\s*:)?|:)\s*" + _LETTER + r"|\(([A-Z])\)" + _REJECTED
                      + r"|\s([A-Z])(?=[.!]?\s*$))"),
           re.compile(r"(?i:option|choice)\s*(?:(?i:is)(?:\s*:)?|:)\s*" + _LETTER))
_HEDGE = re.compile(r"\s*(?:,|/|(?i:or|and))\s*" + _LETTER)  # "... is A or B": a second letter


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def named_option(text: str, choices: Optional[list]) -> Optional[str]:
    """The letter of the option whose text `text` is (after normalisation), if any."""
    for i, option in enumerate(choices or []):
        if normalize_text(str(option)) == normalize_text(text):
            return option_letter(i)
    return None


def gold_letter(answer: str, choices: Optional[list]) -> str:
    """The right option's letter from a row's answer: a letter ("B", "(B)") or, with `choices`, the option's text.

    An index (ScienceQA stores 0-based ints) is neither: `data.answer_template='{{ "ABCDEFGHIJ"[answer] }}'`
    turns it into the letter."""
    text = str(answer).strip()
    named = named_option(text, choices)
    if named is not None:
        return named
    alone = _ALONE.fullmatch(text)
    if alone:
        return alone.group(1).upper()
    hint = (" (an option index? data.answer_template='{{ \"ABCDEFGHIJ\"[answer] }}' makes it a letter)"
            if text.isdigit() else "")
    raise ValueError(f"choice reward: ground truth {answer!r} is neither an option letter nor one of the choices "
                     f"{choices!r}{hint}")


def picked_letter(response: str, choices: Optional[list]) -> Optional[str]:
    """The option the final answer picks, or None when it picks none or several."""
    span = final_answer(response).replace("**", "")  # markdown bold, as instruct models write it: "**B**"
    alone = _ALONE.fullmatch(span.strip())
    if alone:
        return alone.group(1).upper()
    named = named_option(span, choices)  # the option's text written out in full
    if named is not None:
        return named
    # A stated answer wins over letters marked elsewhere: "The answer is B, not A." picks B.
    for phrase in _STATED:
        stated = list(phrase.finditer(span))
        if stated:
            last = stated[-1]
            return None if _HEDGE.match(span, last.end()) else last[last.lastindex]
    marked = {a or b for a, b in _MARKED.findall(span)}
    return marked.pop() if len(marked) == 1 else None


@REWARDS.register("choice", accuracy=True)
def choice_reward(response: str, answer: str, choices: Optional[list] = None, options: Optional[list] = None,
                  **meta) -> dict[str, float]:
    """1 if the final answer picks the right option: "B", "(B)", "B. 12 cm", "The answer is B", or the option's text."""
    listed = choices if choices is not None else options  # rows name the list either way
    listed = as_list(listed) if listed is not None else None  # stored as a list, or as the text of one
    ok = picked_letter(response, listed) == gold_letter(answer, listed)
    return {"overall": float(ok), "accuracy": float(ok)}
