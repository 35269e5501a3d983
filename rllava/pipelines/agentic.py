"""Agentic RL: multi-turn episodes with tools, trained on every policy turn.

The step is the RLVR step; only the rollout differs (a `MultiTurnRollout` drives one
environment per episode) and the episode reward adds the environment's per-turn rewards.
Observation tokens are in the sequence but masked out of the loss.
"""
from __future__ import annotations

from typing import Any

from rllava.config import Config
from rllava.envs import episode_reward, make_environment
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.rlvr import RLVRPipeline
from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer


def multiturn_rollout(cfg: Config, processor: Any, rollout: Any) -> MultiTurnRollout:
    """`rollout` (a single-turn Rollout role) driven turn by turn against a fresh `cfg.env` environment per episode."""
    if not cfg.env.name:
        raise ValueError(f"trainer.pipeline={cfg.trainer.pipeline} needs env.name (e.g. env.name=tools env.tools=[zoom])")
    multimodal = hasattr(processor, "image_processor")
    renderer = ObservationRenderer(processor, role=cfg.env.observation_role, multimodal=multimodal)
    return MultiTurnRollout(rollout, lambda: make_environment(cfg.env), renderer, cfg.env.max_total_tokens)


def setup_agentic(ctx) -> None:
    """Make the context's rollout multi-turn and its reward the episode reward (training and validation)."""
    ctx.rollout = multiturn_rollout(ctx.cfg, ctx.processor, ctx.rollout)
    ctx.reward = EpisodeRewardScorer(ctx.reward, ctx.cfg.env.reward_weights)


@PIPELINES.register("agentic", description="multi-turn episodes with tools (env.name, env.tools); all policy turns trained")
class AgenticPipeline(RLVRPipeline):
    def setup(self, ctx) -> None:
        setup_agentic(ctx)


class EpisodeRewardScorer:
    """Wraps the reward role: answer reward from the reward functions, plus format and tool terms."""

    def __init__(self, scorer, weights: dict[str, float]):
        self.scorer = scorer
        self.weights = weights
        self.accuracy_key = scorer.accuracy_key

    def score(self, episodes) -> dict[str, float]:
        metrics = self.scorer.score(episodes)  # scores each episode's last turn
        for e in episodes:
            e.reward_info["answer_reward"] = e.reward
            e.reward = episode_reward(e.reward, bool(e.info.get("format_ok", False)), e.turn_rewards, self.weights)
        n = max(1, len(episodes))
        metrics["reward/mean"] = sum(e.reward for e in episodes) / n
        metrics.update(agent_metrics(episodes))
        return metrics


def agent_metrics(episodes) -> dict[str, float]:
    """Turns, successful tool calls per episode, and the share of episodes with at least one call."""
    n = max(1, len(episodes))
    return {"agent/turns": sum(e.info.get("turns", 0) for e in episodes) / n,
            "agent/tool_calls": sum(e.info.get("tool_calls", 0) for e in episodes) / n,
            "agent/tool_call_rate": sum(e.info.get("tool_calls", 0) > 0 for e in episodes) / n}
