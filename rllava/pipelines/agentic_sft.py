"""SFT on multi-turn tool-use demonstrations, played through the real environment.

A row's demonstration is the list of assistant turn texts under `data.demo_key` (default
`demo_turns`), e.g. a zoom call on the label and then `<answer>...</answer>`. `DemoEngine`
plays those turns in place of the policy, and the same `MultiTurnRollout` that RL uses runs
them against the configured environment: tools really run (the zoom tool crops the image),
and the observation tokens and images are exactly those RL will see. The loss is the SFT NLL
on the demonstration's tokens (mask 1); observations are context only (mask 0). Validation
runs the policy, greedy and multi-turn, as in `trainer.pipeline=agentic`.
"""
from __future__ import annotations

import json
from typing import Any

from rllava.data.types import Episode, Prompt
from rllava.engines.hf_rollout import Sampling
from rllava.pipelines.agentic import agent_metrics, multiturn_rollout, setup_agentic
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.sft import SFTPipeline
from rllava.roles.multiturn import TURN_KEY
from rllava.roles.rollout import Rollout


def demo_turns(meta: dict[str, Any], key: str) -> list[str]:
    """The row's demonstration: a list of turn texts (or that list as a JSON string)."""
    turns = meta.get(key)
    if isinstance(turns, str):
        turns = json.loads(turns)
    if not isinstance(turns, (list, tuple)) or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"row {meta.get('index', '?')}: data.demo_key={key!r} must hold a list of assistant turn "
                         f"texts, got {turns!r}")
    return list(turns)


class DemoEngine:
    """A rollout engine that plays the row's demonstration: turn k is `meta[demo_key][k]`'s tokens, then EOS.

    The turn index comes from the context prompt (`MultiTurnRollout` puts it in `meta[TURN_KEY]`).
    Past the last demonstration turn it returns an empty, unfinished turn, which ends the episode.
    """

    def __init__(self, tokenizer, eos_id: int, demo_key: str = "demo_turns"):
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.demo_key = demo_key

    def sync_weights(self, model: Any = None) -> None:
        pass

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        episodes = []
        for i, p in enumerate(prompts):
            turns, k = demo_turns(p.meta, self.demo_key), p.meta.get(TURN_KEY, 0)
            ids = self.tokenizer(turns[k], add_special_tokens=False)["input_ids"] + [self.eos_id] if k < len(turns) else []
            for _ in range(sampling.n):
                episodes.append(Episode(prompt=p, response_ids=list(ids), response_mask=[1] * len(ids),
                                        rollout_logp=[0.0] * len(ids), finished=bool(ids), group_id=group_offset + i))
        return episodes


@PIPELINES.register("agentic_sft", description="SFT on multi-turn tool-use demonstrations (data.demo_key) run "
                                                "through the environment; validation as agentic", supervised=True)
class AgenticSFTPipeline(SFTPipeline):
    def setup(self, ctx) -> None:
        setup_agentic(ctx)  # validation: the policy's own multi-turn episodes, scored like RL's
        engine = DemoEngine(ctx.tokenizer, ctx.extra["eos_ids"][0], self.cfg.data.demo_key)
        self.demos = multiturn_rollout(self.cfg, ctx.processor, Rollout(engine, ctx.tokenizer, self.cfg.rollout))
        self.reward = ctx.reward

    def collect(self, trainer, prompts) -> tuple[list[Episode], dict[str, float]]:
        episodes = self.demos.generate(prompts, self.demos.greedy_sampling())
        # Scoring the demonstrations checks them: demo/accuracy below 1 means some are wrong or cut off.
        scores, agent = self.reward.score(episodes), agent_metrics(episodes)
        metrics = {"demo/reward": scores["reward/mean"], "demo/tool_call_rate": agent["agent/tool_call_rate"],
                   "demo/turns": agent["agent/turns"],
                   "demo/complete": sum(e.finished for e in episodes) / max(1, len(episodes))}
        accuracy = f"reward/{self.reward.accuracy_key}"
        if accuracy in scores:
            metrics["demo/accuracy"] = scores[accuracy]
        return episodes, metrics
