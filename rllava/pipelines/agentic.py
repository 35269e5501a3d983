"""Agentic RL: multi-turn episodes with tools, trained on every policy turn.

The step is the RLVR step; only the rollout differs (a `MultiTurnRollout` drives one
environment per episode) and the episode reward adds the environment's per-turn rewards.
Observation tokens are in the sequence but masked out of the loss.
"""
from __future__ import annotations

from rllava.envs import episode_reward, make_environment
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.rlvr import RLVRPipeline
from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer


@PIPELINES.register("agentic", description="multi-turn episodes with tools (env.name, env.tools); all policy turns trained")
class AgenticPipeline(RLVRPipeline):
    def setup(self, ctx) -> None:
        env_cfg = self.cfg.env
        if not env_cfg.name:
            raise ValueError("trainer.pipeline=agentic needs env.name (e.g. env.name=tools env.tools=[zoom])")
        multimodal = hasattr(ctx.processor, "image_processor")
        renderer = ObservationRenderer(ctx.processor, role=env_cfg.observation_role, multimodal=multimodal)
        ctx.rollout = MultiTurnRollout(ctx.rollout, lambda: make_environment(env_cfg), renderer,
                                       env_cfg.max_total_tokens)
        ctx.reward = EpisodeRewardScorer(ctx.reward, env_cfg.reward_weights)


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
        metrics.update({
            "reward/mean": sum(e.reward for e in episodes) / n,
            "agent/turns": sum(e.info.get("turns", 0) for e in episodes) / n,
            "agent/tool_calls": sum(e.info.get("tool_calls", 0) for e in episodes) / n,
            "agent/tool_call_rate": sum(e.info.get("tool_calls", 0) > 0 for e in episodes) / n,
        })
        return metrics
