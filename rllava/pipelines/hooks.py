"""Hooks that change what the RLVR step does without copying it.

A hook may implement any of `before_rollout(trainer, prompts, metrics)` (returning the prompts to
sample from), `after_rollout(trainer, episodes, metrics)` and `after_scoring(trainer, episodes,
metrics)` (each returning the, possibly new, episodes).
Which hooks run is derived from the config (`hooks_for`), not from algorithm names.
"""
from __future__ import annotations

import dataclasses
import random

import torch

from rllava.algorithms import ADVANTAGES, GROUP_FILTERS, SFT_TOKEN_WEIGHTS, hint_ratio_at
from rllava.algorithms.demonstrations import SFT_MIXES
from rllava.config import Config, ConfigError
from rllava.data.types import Episode, Prompt
from rllava.engines import distributed as du
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.sft import demo_end_id, sft_episodes


def run_hooks(hooks: list, name: str, trainer, items: list, metrics: dict) -> list:
    """`items` through every hook that has the method `name` (before_rollout, after_rollout, after_scoring), in order."""
    for hook in hooks:
        if hasattr(hook, name):
            items = getattr(hook, name)(trainer, items, metrics)
    return items


def group_list(episodes: list[Episode]) -> list[list[Episode]]:
    groups: dict[int, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.group_id, []).append(e)
    return list(groups.values())


class GreedyBaseline:
    """ReMax: the reward of one greedy rollout per prompt is every sample's baseline.

    `shaping`: hooks that changed the prompts before the rollout (UFT hints); the greedy rollout starts
    from the same changed prompt and goes through their `after_rollout` too, so it is scored as the
    samples are (the hint at the start of its response)."""

    def __init__(self, shaping: list | None = None):
        self.shaping = list(shaping or [])

    def after_rollout(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        ctx = trainer.ctx
        groups = group_list(episodes)
        greedy = ctx.rollout.generate([g[0].prompt for g in groups], ctx.rollout.greedy_sampling())
        for hook in self.shaping:
            greedy = hook.after_rollout(trainer, greedy, {})
        ctx.reward.score(greedy)
        # Shaped as the samples' scores will be (overlong_penalty by the greedy response's own length).
        baseline = trainer.pipeline.shape_scores(torch.tensor([b.reward for b in greedy], dtype=torch.float32), greedy)
        for g, b in zip(groups, baseline.tolist()):
            for e in g:
                e.baseline_reward = b
        metrics["reward/greedy_baseline"] = sum(b.reward for b in greedy) / max(1, len(greedy))
        return episodes


class DynamicSampling:
    """DAPO: keep only informative groups; sample more prompts until the batch is full (bounded tries).

    Under torchrun each rank filters its own groups and fills its own share of the batch, but all ranks
    sample extra rounds in lock-step (until none is short): generation is a collective with a sharded
    model, and the prompt loaders must stay in step. An extra round goes through the hooks that come
    before this one (ReMax's greedy baseline, retiring solved prompts, UFT hints), as the first round did.
    """

    def __init__(self, before: list | None = None):
        self.before = list(before or [])

    def _extra_round(self, trainer, prompts: list[Prompt], offset: int) -> list[Episode]:
        ctx, scratch = trainer.ctx, {}  # the first round's metrics stand for the step
        prompts = run_hooks(self.before, "before_rollout", trainer, prompts, scratch)
        episodes = ctx.rollout.generate(prompts, ctx.rollout.train_sampling(), group_offset=offset)
        episodes = run_hooks(self.before, "after_rollout", trainer, episodes, scratch)
        ctx.reward.score(episodes)
        return run_hooks(self.before, "after_scoring", trainer, episodes, scratch)

    def after_scoring(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        ctx, algo = trainer.ctx, trainer.cfg.algorithm
        keep_fn = GROUP_FILTERS.get(algo.group_filter)
        wanted = trainer.cfg.data.batch_size // du.world_size()
        kept: list[list[Episode]] = []
        tries, offset, seen = 0, 0, 0
        while True:
            groups = group_list(episodes)
            seen += len(groups)
            rewards = torch.tensor([e.reward for g in groups for e in g])
            gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
            mask = keep_fn(rewards, gids, algo)
            starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
            kept += [g for g, s in zip(groups, starts) if bool(mask[s])]
            tries += 1
            any_short = du.all_reduce_max(float(len(kept) < wanted))
            if not any_short or tries > algo.max_filter_tries:
                break
            offset = max(e.group_id for e in episodes) + 1  # fresh group ids for the extra prompts
            extra = du.shard_prompts(ctx.loader.next_batch(), du.rank(), du.world_size())
            episodes = self._extra_round(trainer, extra, offset)
        metrics["filter/kept_groups"] = float(len(kept))
        metrics["filter/kept_fraction"] = len(kept) / max(1, seen)
        metrics["filter/rollout_rounds"] = float(tries)
        kept = kept[:wanted] if kept else group_list(episodes)  # never train on an empty batch
        return [e for g in kept for e in g]


def demonstration_episodes(trainer, groups: list[list[Episode]]) -> list[Episode]:
    """Each group's row demonstration, scored like a rollout and marked `is_expert`, in the group's id:
    `data.response_template` rendered as in SFT, then EOS; or what the pipeline set up instead in
    `ctx.extra["demonstrations"]` (multi-turn: the demonstration played through the environment)."""
    ctx = trainer.ctx
    prompts = [g[0].prompt for g in groups]
    play = ctx.extra.get("demonstrations")
    demos = play(prompts) if play else sft_episodes(prompts, ctx.tokenizer, trainer.cfg.data.response_template,
                                                    demo_end_id(ctx))
    for g, d in zip(groups, demos):
        # In the group's id, with its baseline (ReMax's greedy reward): a group's samples share both.
        d.group_id, d.is_expert, d.baseline_reward = g[0].group_id, True, g[0].baseline_reward
    ctx.reward.score(demos)
    return demos


class AddDemonstrations:
    """Every group gets its demonstration as one more sample. `mix` (LUFFY): an off-policy sample, so the
    group advantages mix rollouts and demonstration (the `luffy` loss shapes its tokens). `sft` (CHORD):
    SFT data next to the rollouts, trained by the SFT term alone (rllava.algorithms.demonstrations)."""

    def after_scoring(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        groups = group_list(episodes)
        demos = demonstration_episodes(trainer, groups)
        metrics["reward/demo_mean"] = sum(d.reward for d in demos) / max(1, len(demos))
        return [e for g, d in zip(groups, demos) for e in (*g, d)]


class SwitchToDemonstrations:
    """HPT: a group whose rollouts score at most `algorithm.hpt_threshold` on average is replaced by
    its demonstration, trained by the SFT term (`algorithm.sft_coef`; alone in its group its advantage
    is 0); the other groups train by RL on their rollouts."""

    def after_scoring(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        groups = group_list(episodes)
        failing = [sum(e.reward for e in g) / len(g) <= trainer.cfg.algorithm.hpt_threshold for g in groups]
        demos = iter(demonstration_episodes(trainer, [g for g, f in zip(groups, failing) if f]))
        metrics["demo/switched_fraction"] = sum(failing) / max(1, len(groups))
        return [e for g, f in zip(groups, failing) for e in ([next(demos)] if f else g)]


def hint_lengths(trainer, prompts: list[Prompt], totals: list[int], metrics: dict) -> list[int]:
    """UFT's hint length for each prompt's demonstration of `totals[i]` tokens: Binomial(L, p), p annealed by
    `hint_ratio_at`. Seeded by (trainer.seed, step, prompt), so a resumed run, another number of ranks or a
    resampling round of dynamic sampling draw as they would."""
    ratio = hint_ratio_at(trainer.cfg.algorithm, trainer.step)
    lengths = []
    for prompt, total in zip(prompts, totals):
        rng = random.Random(f"{trainer.cfg.trainer.seed}/{trainer.step}/{prompt.index}")
        lengths.append(sum(rng.random() < ratio for _ in range(total)))
    metrics["demo/hint_ratio"] = ratio
    metrics["demo/hint_tokens_mean"] = sum(lengths) / max(1, len(lengths))
    return lengths


class HintFromDemonstrations:
    """UFT (Liu et al. 2025, arXiv 2505.16984): each prompt's rollouts start from a hint, the first l tokens
    of its demonstration, with l ~ Binomial(L, p) for a demonstration of L tokens (before EOS) and p
    annealed by `hint_ratio_at`. The hint then becomes the start of every response of the group: the
    reward judges the whole solution, the SFT term trains the hint tokens and RL the generated rest.
    (The agentic pipeline's multi-turn version is `rllava.pipelines.agentic.HintTurns`.)"""

    ORIGINAL = "_unhinted_prompt"  # Prompt.meta key: the prompt without its hint

    def before_rollout(self, trainer, prompts: list[Prompt], metrics: dict) -> list[Prompt]:
        ctx, cfg = trainer.ctx, trainer.cfg
        demos = sft_episodes(prompts, ctx.tokenizer, cfg.data.response_template, demo_end_id(ctx))
        solutions = [d.response_ids[:-1] for d in demos]  # without EOS: the rollout must still end the answer itself
        out = []
        for prompt, solution, n in zip(prompts, solutions, hint_lengths(trainer, prompts, [len(s) for s in solutions], metrics)):
            hint = solution[:n]
            if not hint:
                out.append(prompt)
                continue
            seq = {k: v + [0] * len(hint) for k, v in prompt.seq.items()}  # text tokens: no image/type ids
            # (text: for engines that re-tokenize it, e.g. vLLM with images, which checks the ids still agree)
            out.append(dataclasses.replace(prompt, input_ids=prompt.input_ids + hint, seq=seq,
                                           text=prompt.text + ctx.tokenizer.decode(hint) if prompt.text else "",
                                           meta={**prompt.meta, self.ORIGINAL: (prompt, hint)}))
        return out

    def after_rollout(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        tokenizer = trainer.ctx.tokenizer
        for e in episodes:
            if self.ORIGINAL not in e.prompt.meta:
                continue
            e.prompt, hint = e.prompt.meta[self.ORIGINAL]
            e.hint_len = len(hint)
            e.response_ids = hint + e.response_ids
            e.response_mask = [1] * len(hint) + e.response_mask
            if e.rollout_logp is not None:
                e.rollout_logp = [0.0] * len(hint) + e.rollout_logp
            e.response_text = tokenizer.decode(e.response_ids, skip_special_tokens=True)
        return episodes


DEMONSTRATION_HOOKS = {"mix": AddDemonstrations, "switch": SwitchToDemonstrations, "sft": AddDemonstrations,
                       "hint": HintFromDemonstrations}


class RetireSolved:
    """Skywork-OR1 / Polaris: a prompt whose rollouts reach `data.drop_solved` mean accuracy leaves the data.

    Its next groups would be all correct, carry no advantage, and be generated for nothing. The
    decision is taken on every rank's groups together, so the ranks' loaders stay in step. It runs
    before dynamic sampling, which drops such groups.
    """

    def after_scoring(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        key = trainer.ctx.reward.accuracy_key
        scores: dict[int, list[float]] = {}
        for e in episodes:
            if not e.is_expert and not e.hint_len:  # a UFT-hinted rollout starts from the answer: it proves nothing
                scores.setdefault(e.prompt.index, []).append(e.reward_info.get(key, e.reward))
        solved = [i for i, v in scores.items() if sum(v) / len(v) >= trainer.cfg.data.drop_solved]
        everywhere = du.all_gather_cat(torch.tensor(solved, dtype=torch.long)).tolist()
        trainer.ctx.loader.retire(everywhere)
        metrics["data/retired"] = float(len(trainer.ctx.loader.retired))
        return episodes


class MaskTruncated:
    """DAPO's overlong filtering: a rollout cut at the length limit trains no token.

    Its reward still counts in its group's statistics (the baseline the other samples are compared
    with); only its own loss is dropped, so a truncated answer is neither rewarded nor punished for
    text it had no room to finish. A UFT hint prefix stays trained (it is a demonstration).
    """

    def after_scoring(self, trainer, episodes: list[Episode], metrics: dict) -> list[Episode]:
        rollouts = [e for e in episodes if not e.is_expert]
        cut = [e for e in rollouts if not e.finished]
        for e in cut:
            e.response_mask = e.response_mask[:e.hint_len] + [0] * (len(e.response_mask) - e.hint_len)
        metrics["response/masked_truncated"] = len(cut) / max(1, len(rollouts))
        return episodes


def demonstration_hook(cfg: Config):
    """The hook of `algorithm.demonstrations` for this pipeline (None without demonstrations), its settings checked."""
    mode = cfg.algorithm.demonstrations
    if not mode:
        return None
    if mode not in DEMONSTRATION_HOOKS:
        raise ConfigError(f"algorithm.demonstrations: {mode!r} is not one of {sorted(DEMONSTRATION_HOOKS)}")
    supported = PIPELINES.entry(cfg.trainer.pipeline).meta.get("demonstrations", {})  # mode -> hook class
    if mode not in supported:
        raise ConfigError(f"algorithm.demonstrations={mode} does not work with trainer.pipeline="
                          f"{cfg.trainer.pipeline} (it takes {list(supported)})")
    if cfg.algorithm.tis_cap is not None:
        raise ConfigError("algorithm.demonstrations: demonstrations have no rollout log-probs, so "
                          "algorithm.tis_cap cannot be used with them")
    if mode in ("switch", "mix") and cfg.algorithm.group_filter:
        raise ConfigError(f"algorithm.group_filter={cfg.algorithm.group_filter} drops the all-wrong groups before "
                          f"algorithm.demonstrations={mode} sees them, and those are the groups whose demonstration "
                          "it is for: use one or the other")
    if mode == "hint" and cfg.algorithm.hint_steps <= 0:
        raise ConfigError("algorithm.demonstrations=hint anneals the hint over algorithm.hint_steps: set it > 0")
    if mode in ("switch", "sft") and not cfg.algorithm.sft_coef:
        raise ConfigError(f"algorithm.demonstrations={mode} trains demonstrations by the SFT term: set "
                          "algorithm.sft_coef > 0 (HPT uses 1)")
    check_sft_term(cfg.algorithm)
    return supported[mode]()


def hooks_for(cfg: Config) -> list:
    hooks = []
    demo = demonstration_hook(cfg)
    shapes_rollouts = hasattr(demo, "before_rollout")  # UFT hints
    if "baseline_rewards" in ADVANTAGES.entry(cfg.algorithm.adv_estimator).meta.get("requires", ()):
        hooks.append(GreedyBaseline(shaping=[demo] if shapes_rollouts else []))
    if cfg.data.drop_solved is not None:  # before the filter, which drops solved groups
        hooks.append(RetireSolved())
    if shapes_rollouts:  # UFT hints shape the rollouts: the filter judges, and resamples, hinted groups
        hooks.append(demo)
    if cfg.algorithm.group_filter:
        hooks.append(DynamicSampling(before=hooks))
    if demo is not None and demo not in hooks:  # after filtering: groups are judged by their rollouts alone
        hooks.append(demo)
    if cfg.algorithm.mask_truncated:  # last: it also sees the extra rounds of dynamic sampling
        hooks.append(MaskTruncated())
    return hooks


def check_sft_term(algo) -> None:
    """The SFT term's settings, before any model is loaded."""
    if algo.sft_mix not in SFT_MIXES:
        raise ConfigError(f"algorithm.sft_mix: {algo.sft_mix!r} is not one of {list(SFT_MIXES)}")
    SFT_TOKEN_WEIGHTS.entry(algo.sft_token_weight)  # an unknown name fails here, naming the known ones
    coefs = [algo.sft_coef] + ([algo.sft_coef_final] if algo.sft_coef_final is not None else [])
    if algo.sft_mix == "convex" and not all(0.0 <= c <= 1.0 for c in coefs):
        raise ConfigError(f"algorithm.sft_mix=convex weighs (1 - c) * RL + c * SFT: sft_coef and sft_coef_final "
                          f"must lie in [0, 1], got {coefs}")
