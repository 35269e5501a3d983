"""Agentic RL: multi-turn episodes with tools, trained on every policy turn.

The step is the RLVR step; only the rollout differs (a `MultiTurnRollout` drives one
environment per episode) and the episode reward adds the environment's per-turn rewards.
Observation tokens are in the sequence but masked out of the loss. With `algorithm.demonstrations`
a group's demonstration is the row's tool-use turns played through the environment (mix, switch, sft),
or its first tokens start the group's episodes (hint).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import torch

from rllava.config import Config, ConfigError
from rllava.data.rows import DataError
from rllava.data.types import Episode, Prompt
from rllava.engines.hf_rollout import Sampling
from rllava.envs import episode_reward, make_environment
from rllava.pipelines.hooks import DEMONSTRATION_HOOKS, hint_lengths
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.rlvr import RLVRPipeline
from rllava.pipelines.sft import demo_end_id
from rllava.roles.multiturn import HINT_KEY, TURN_KEY, MultiTurnRollout, ObservationRenderer
from rllava.roles.reward import info_means, source_means
from rllava.roles.rollout import Rollout


def multiturn_rollout(cfg: Config, processor: Any, rollout: Any) -> MultiTurnRollout:
    """`rollout` (a single-turn Rollout role) driven turn by turn against a fresh `cfg.env` environment per episode."""
    if not cfg.env.name:
        raise ConfigError(f"trainer.pipeline={cfg.trainer.pipeline} needs env.name (e.g. env.name=tools env.tools=[zoom])")
    multimodal = hasattr(processor, "image_processor")
    renderer = ObservationRenderer(processor, role=cfg.env.observation_role, multimodal=multimodal,
                                   template=cfg.env.observation_template)
    return MultiTurnRollout(rollout, lambda: make_environment(cfg.env), renderer, cfg.env.max_total_tokens,
                            cfg.env.workers, image_key=cfg.data.image_key)


def setup_agentic(ctx) -> None:
    """Make the context's rollout multi-turn and its reward the episode reward (training and validation)."""
    ctx.rollout = multiturn_rollout(ctx.cfg, ctx.processor, ctx.rollout)
    ctx.reward = EpisodeRewardScorer(ctx.reward, ctx.cfg.env.reward_weights)


def demo_turns(meta: dict[str, Any], key: str, where: str = "") -> list[str]:
    """The row's demonstration: a list of turn texts (or that list as a JSON string); `where` names the row."""
    turns = meta.get(key)
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            pass  # not JSON: reported below as not a list
    row = where or f"dataset row {meta.get('index', '?')}"
    if not isinstance(turns, (list, tuple)) or not all(isinstance(t, str) for t in turns):
        raise DataError(f"{row}, field {key!r} (data.demo_key): must hold a list of assistant "
                        f"turn texts, got {turns!r}")
    if not any(t.strip() for t in turns):  # nothing to imitate (an empty list trained on no token and crashed)
        raise DataError(f"{row}, field {key!r} (data.demo_key): the demonstration is empty, got {turns!r}")
    return list(turns)


def demo_turn_ids(tokenizer, prompt: Prompt, key: str, eos_id: int, every_turn: bool = True) -> list[list[int]]:
    """The row's demonstration as token ids, each turn ended by EOS as a policy turn is (with raw observations,
    `every_turn=False`, only the last: the assistant's text goes on through the observations)."""
    turns = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in demo_turns(prompt.meta, key, prompt.where)]
    return [ids + [eos_id] if every_turn or k == len(turns) - 1 else ids for k, ids in enumerate(turns)]


def turns_end_with_eos(cfg: Config) -> bool:
    """Whether every policy turn ends with EOS: not where observations continue the assistant's text (raw)."""
    return cfg.env.observation_role != "raw"


def hint_turns(turns: list[list[int]], n: int) -> list[tuple[list[int], bool]]:
    """The first `n` tokens of a demonstration, cut at its turns: (ids, whole turn?) each. Only the last
    piece can be part of a turn, which the policy then continues."""
    out = []
    for ids in turns:
        if n <= 0:
            break
        out.append((ids[:n], n >= len(ids)))
        n -= len(ids)
    return out


class HintTurns:
    """UFT (Liu et al. 2025) in multi-turn episodes: a group's episodes start from a hint, the first
    l ~ Binomial(L, p) tokens of the row's demonstration turns (L counts each turn's tokens and the EOS
    that ends it, but not the last EOS: the policy still ends the episode itself), p annealed as in
    single-turn UFT. Whole hinted turns are played as written, through the environment (tools run,
    observations follow); a hint that ends inside a turn is the start of that turn, which the policy
    continues and the environment then reads whole. The SFT term trains the hinted tokens, RL the rest."""

    UNHINTED = "_prompt_without_hint"  # Prompt.meta key: the row's own prompt, put back after the rollout

    def before_rollout(self, trainer, prompts: list[Prompt], metrics: dict) -> list[Prompt]:
        cfg, tokenizer = trainer.cfg, trainer.ctx.tokenizer
        eos, every = demo_end_id(trainer.ctx), turns_end_with_eos(cfg)
        demos = [demo_turn_ids(tokenizer, p, cfg.data.demo_key, eos, every) for p in prompts]
        lengths = hint_lengths(trainer, prompts, [sum(map(len, d)) - 1 for d in demos], metrics)
        return [dataclasses.replace(p, meta={**p.meta, HINT_KEY: hint_turns(d, n), self.UNHINTED: p}) if n else p
                for p, d, n in zip(prompts, demos, lengths)]

    def after_rollout(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        for e in episodes:  # rewards and logs see the row as it is; a group still shares one Prompt
            e.prompt = e.prompt.meta.get(self.UNHINTED, e.prompt)
        return episodes


class DemoEngine:
    """A rollout engine that plays the row's demonstration: turn k is `meta[demo_key][k]`'s tokens, then EOS.

    The turn index comes from the context prompt (`MultiTurnRollout` puts it in `meta[TURN_KEY]`).
    Past the last demonstration turn it returns an empty, unfinished turn, which ends the episode.
    """

    def __init__(self, tokenizer, eos_id: int, demo_key: str = "demo_turns", every_turn: bool = True):
        self.tokenizer = tokenizer
        self.eos_ids = [eos_id]  # what ends a turn, as a rollout engine names it
        self.demo_key = demo_key
        self.every_turn = every_turn  # EOS after every turn (chat observations) or the last only (raw)

    def sync_weights(self, model: Any = None) -> None:
        pass

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        episodes = []
        for i, p in enumerate(prompts):
            turns = demo_turn_ids(self.tokenizer, p, self.demo_key, self.eos_ids[0], self.every_turn)
            k = p.meta.get(TURN_KEY, 0)
            ids = turns[k] if k < len(turns) else []
            for _ in range(sampling.n):
                episodes.append(Episode(prompt=p, response_ids=list(ids), response_mask=[1] * len(ids),
                                        rollout_logp=[0.0] * len(ids), finished=bool(ids), group_id=group_offset + i))
        return episodes


def demonstration_rollout(ctx) -> MultiTurnRollout:
    """A multi-turn rollout that plays the rows' demonstrations (`data.demo_key`) against the environment."""
    engine = DemoEngine(ctx.tokenizer, demo_end_id(ctx), ctx.cfg.data.demo_key, turns_end_with_eos(ctx.cfg))
    return multiturn_rollout(ctx.cfg, ctx.processor, Rollout(engine, ctx.tokenizer, ctx.cfg.rollout))


@PIPELINES.register("agentic", description="multi-turn episodes with tools (env.name, env.tools); all policy turns trained",
                    demonstrations={**DEMONSTRATION_HOOKS, "hint": HintTurns})
class AgenticPipeline(RLVRPipeline):
    """With `algorithm.demonstrations`, a group's demonstration is the row's `data.demo_key` turns played
    through the environment (tools run, observations are masked out of every loss), as in `agentic_sft`."""

    def demonstration_check(self) -> Callable[[dict, str], Any] | None:
        if not self.cfg.algorithm.demonstrations:
            return None
        return lambda meta, where: demo_turns(meta, self.cfg.data.demo_key, where)

    LENGTH_LIMIT_SETTING = "env.max_total_tokens"  # an episode ends once its response holds this many tokens

    def length_limit(self) -> int:
        return self.cfg.env.max_total_tokens

    def rollout_lengths(self, episodes: list[Episode]) -> torch.Tensor:
        """Every response token of the episode, turns, observations and hints alike, as the budget counts them."""
        return torch.tensor([len(e.response_ids) for e in episodes])

    def setup(self, ctx) -> None:
        setup_agentic(ctx)
        if self.cfg.algorithm.demonstrations:
            demos = demonstration_rollout(ctx)
            ctx.extra["demonstrations"] = lambda prompts: demos.generate(prompts, demos.greedy_sampling())


# Stop reasons (`Episode.info["stop"]`) of an episode whose last turn the environment took as its final answer: an
# `<answer>`, or ToolEnv's plain-text message where `no_action=end` lets one end the episode. Not `max_turns` (the
# turns ran out, e.g. on a skipped tool call) nor `length`/`budget` (a cut-off turn the environment never read): the
# last turn is then no answer, and numbers in a tool call must not score as one.
ANSWER_STOPS = frozenset({"answer", "no_action"})


def answered(episode: Episode) -> bool:
    """Whether the environment ended the episode on a final answer (see `ANSWER_STOPS`)."""
    return episode.finished and episode.info.get("stop") in ANSWER_STOPS


class EpisodeRewardScorer:
    """Wraps the reward role: answer reward from the reward functions, plus format and tool terms.

    The reward functions score the last turn's text, and only of an episode that ended with an answer; any other
    episode's answer reward and all its reward parts (accuracy included) are 0."""

    def __init__(self, scorer, weights: dict[str, float]):
        self.scorer = scorer
        self.weights = weights
        self.accuracy_key = scorer.accuracy_key

    def score(self, episodes) -> dict[str, float]:
        metrics = self.scorer.score(episodes)  # scores each episode's last turn
        for e in episodes:
            if not answered(e):
                e.reward = 0.0
                e.reward_info = {k: 0.0 for k in e.reward_info}
            e.reward_info["answer_reward"] = e.reward
            e.reward = episode_reward(e.reward, bool(e.info.get("format_ok", False)), e.turn_rewards, self.weights)
        n = max(1, len(episodes))
        metrics["reward/mean"] = sum(e.reward for e in episodes) / n
        metrics.update(info_means(episodes))  # the parts as scored above, not as the reward functions gave them
        metrics.update(source_means(episodes, self.accuracy_key))  # of the episode rewards, over the answer rewards
        metrics.update(agent_metrics(episodes))
        return metrics

    def close(self) -> None:
        self.scorer.close()


def agent_metrics(episodes) -> dict[str, float]:
    """Turns, successful tool calls per episode, the share of episodes with at least one call, and the share that
    ended with an answer."""
    n = max(1, len(episodes))
    return {"agent/turns": sum(e.info.get("turns", 0) for e in episodes) / n,
            "agent/tool_calls": sum(e.info.get("tool_calls", 0) for e in episodes) / n,
            "agent/tool_call_rate": sum(e.info.get("tool_calls", 0) > 0 for e in episodes) / n,
            "agent/answer_rate": sum(answered(e) for e in episodes) / n}
