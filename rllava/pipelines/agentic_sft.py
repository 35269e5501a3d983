"""SFT on multi-turn tool-use demonstrations, played through the real environment.

A row's demonstration is the list of assistant turn texts under `data.demo_key` (default
`demo_turns`), e.g. a zoom call on the label and then `<answer>...</answer>`. `DemoEngine`
(rllava/pipelines/agentic.py) plays those turns in place of the policy, and the same `MultiTurnRollout` that RL uses runs
them against the configured environment: tools really run (the zoom tool crops the image),
and the observation tokens and images are exactly those RL will see. The loss is the SFT NLL
on the demonstration's tokens (mask 1); observations are context only (mask 0). Validation
runs the policy, greedy and multi-turn, as in `trainer.pipeline=agentic`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rllava.data.types import Episode
from rllava.pipelines.agentic import agent_metrics, demo_turns, demonstration_rollout, setup_agentic
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.sft import SFTPipeline


@PIPELINES.register("agentic_sft", description="SFT on multi-turn tool-use demonstrations (data.demo_key) run "
                                                "through the environment; validation as agentic", supervised=True)
class AgenticSFTPipeline(SFTPipeline):
    def setup(self, ctx) -> None:
        setup_agentic(ctx)  # validation: the policy's own multi-turn episodes, scored like RL's
        self.demos = demonstration_rollout(ctx)
        self.reward = ctx.reward

    def demonstration_check(self) -> Callable[[dict, str], Any]:
        return lambda meta, where: demo_turns(meta, self.cfg.data.demo_key, where)

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
