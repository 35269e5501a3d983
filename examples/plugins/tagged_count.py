"""Example plugin: a strict reward, registered from outside the package.

`tagged_count` is 1 only for a response that is exactly `<answer>N</answer>` with the right count. A
randomly initialised model essentially never writes that, so plain RL sees all-zero rewards: the case
the SFT-RL hybrids are for (benchmarks/hybrids_cold_start.py). Use it with
`plugins: [examples/plugins/tagged_count.py]` and `reward.functions: {tagged_count: 1.0}`.
"""
import re

from rllava.rewards import REWARDS

TAGGED = re.compile(r"\s*<answer>\s*(\d+)\s*</answer>\s*")


@REWARDS.register("tagged_count", accuracy=True)
def tagged_count(response: str, answer: str, **meta) -> dict[str, float]:
    """1 if the response is exactly `<answer>N</answer>` with N the true count, else 0."""
    match = TAGGED.fullmatch(response)
    ok = match is not None and int(match.group(1)) == int(answer)
    return {"overall": float(ok), "accuracy": float(ok)}
