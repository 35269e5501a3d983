"""`search`: text only; questions about made-up places whose facts only the task's corpus holds.

"What colour is the flag of Velmora?" can only be answered by looking Velmora up: each sample adds its
place's passage (and a decoy about another place with a similar name) to `corpus.jsonl`. Rows carry a
demonstration (`demo_turns`): the search, then the answer, for a warm start with `agentic_sft`.
"""
from __future__ import annotations

import json
import random

from rllava.tasks.base import TASKS, Sample

SYLLABLES = ("vel", "mor", "an", "tis", "kar", "lo", "ren", "dra", "sul", "ith", "bor", "ea", "nax", "quo")
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "purple", "orange")
FIELDS = ("flag", "river", "tower")


def place_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(4)).capitalize()  # 38 k names: few repeats


SEARCH_ENV = {"name": "tools", "tools": ["search"], "call_format": "tags", "observation_role": "raw",
              "observation_template": "\n<information>{text}</information>\n", "max_turns": 2}


@TASKS.register("search", template="{{ prompt }} Look it up with <search>query</search>, then answer as <answer>colour</answer>.",
                reward={"exact_match": 1.0}, env=SEARCH_ENV, rollout={"stop": ["</search>"]})
def search(rng: random.Random) -> Sample:
    """Text only: the colour of a made-up place's flag, river or tower, found in the corpus (env.tools=[search])."""
    name, decoy = place_name(rng), place_name(rng)
    while decoy == name:  # the decoy's passage would contradict the answer's
        decoy = place_name(rng)
    thing, colour, other = rng.choice(FIELDS), rng.choice(COLOURS), rng.choice(COLOURS)
    docs = [{"id": f"{name}-{thing}", "title": name, "text": f"The {thing} of {name} is {colour}."},
            {"id": f"{decoy}-{thing}", "title": decoy, "text": f"The {thing} of {decoy} is {other}."}]
    demo = [f"<search>{name} {thing}</search>", f"<answer>{colour}</answer>"]
    return Sample(None, f"What colour is the {thing} of {name}?", colour,
                  {"place": name, "demo_turns": json.dumps(demo)}, documents=docs)
