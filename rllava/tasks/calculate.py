"""`calculate`: text only; arithmetic too long to do in one's head, solved by running code (ToRL/ReTool style).

"What is 4821 * 93 - 7150?" The policy writes `<python>print(4821 * 93 - 7150)</python>`, generation stops
there (`rollout.stop=['</python>']`), the sandboxed interpreter's output continues its text inside
`<output>...</output>`, and it answers. Rows carry that demonstration (`demo_turns`) for a warm start with
`agentic_sft`; the code never runs in rllava's process (see `rllava/envs/sandbox.py`).
"""
from __future__ import annotations

import json
import random

from rllava.tasks.arithmetic import random_expression
from rllava.tasks.base import TASKS, Sample

CODE_ENV = {"name": "tools", "tools": ["python"], "call_format": "tags", "observation_role": "raw",
            "observation_template": "\n<output>\n{text}\n</output>\n", "max_turns": 2}


@TASKS.register("calculate", template="{{ prompt }} Compute it with <python>code</python>, then answer as <answer>number</answer>.",
                reward={"count": 1.0}, env=CODE_ENV, rollout={"stop": ["</python>"]})
def calculate(rng: random.Random, terms: int = 3, max_value: int = 9999, ops: str = "+-*") -> Sample:
    """Text only: the value of a long integer expression, meant to be computed with the python tool (env.tools=[python])."""
    expression, value = random_expression(rng, terms, max_value, ops, "calculate")
    demo = [f"<python>print({expression})</python>", f"<answer>{value}</answer>"]
    return Sample(None, f"What is {expression}?", str(value), {"expression": expression, "demo_turns": json.dumps(demo)})
