"""Group filters and reward shaping against hand-computed keep masks and penalties."""
from dataclasses import replace

import pytest
import torch

from rllava.algorithms import GROUP_FILTERS, REWARD_SHAPERS
from rllava.config import AlgorithmConfig

CFG = AlgorithmConfig()


def test_dapo_nonuniform_keeps_groups_with_spread():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3])  # spread | all equal | single sample | all zero
    keep = GROUP_FILTERS["dapo_nonuniform"](rewards, groups, CFG)
    assert keep.tolist() == [True, True, False, False, False, False, False]


def test_dapo_nonuniform_with_interleaved_group_ids():
    keep = GROUP_FILTERS["dapo_nonuniform"](torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([5, 2, 5, 2]), CFG)
    assert keep.tolist() == [True, False, True, False]


def test_reward_range_is_an_open_interval_on_the_group_mean():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.25, 0.75, 0.75, 0.0, 0.0, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 4, 5])  # means 0.5, 1, 0.25, 0.75, 0, 0.5
    cfg = replace(CFG, filter_reward_low=0.25, filter_reward_high=0.75)
    keep = GROUP_FILTERS["reward_range"](rewards, groups, cfg)
    assert keep.tolist() == [True, True, False, False, False, False, False, False, False, True]
    # The defaults (0, 1) drop the all-wrong and all-right groups of 0/1 rewards, and nothing else.
    keep = GROUP_FILTERS["reward_range"](torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1, 2, 2]), CFG)
    assert keep.tolist() == [False, False, False, False, True, True]


def test_overlong_penalty_soft_buffer():
    cfg = replace(CFG, overlong_buffer_len=5, overlong_penalty_factor=1.0)
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])
    out = REWARD_SHAPERS["overlong_penalty"](torch.ones(6), lengths, cfg, max_new_tokens=20)
    # 0 up to 20 - 5 = 15; (15 - L) / 5 in the buffer; -1 at and beyond 20
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.8, 0.4, 0.0, 0.0]))
    half = REWARD_SHAPERS["overlong_penalty"](torch.zeros(6), lengths, replace(cfg, overlong_penalty_factor=0.5), 20)
    torch.testing.assert_close(half, torch.tensor([0.0, 0.0, -0.1, -0.3, -0.5, -0.5]))


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        REWARD_SHAPERS["overlong_penalty"](torch.ones(1), torch.tensor([3]), replace(CFG, overlong_buffer_len=0), 20)
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        REWARD_SHAPERS["overlong_penalty"](torch.ones(1), torch.tensor([3]), CFG, max_new_tokens=8)  # default 16 > 8


def test_mask_truncated_drops_cut_rollouts_from_the_loss_not_from_the_group():
    """GRPO with DAPO's overlong filtering: the cut sample trains nothing, yet its reward stays in the baseline."""
    from rllava.config import Config
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.hooks import MaskTruncated, hooks_for
    from rllava.pipelines.rlvr import rl_advantages

    p = Prompt(input_ids=[7, 8])
    rewards, finished = [1.0, -1.0, 1.0, 0.0], [True, False, True, True]  # the cut one's reward is not 0
    eps = [Episode(p, [1, 2, 3], [1, 1, 1], reward=r, group_id=0, finished=f) for r, f in zip(rewards, finished)]
    hint = Episode(p, [1, 2, 3], [1, 1, 1], reward=0.0, group_id=1, finished=False, hint_len=1)  # UFT
    metrics = {}
    out = MaskTruncated().after_scoring(None, eps + [hint], metrics)
    assert [e.response_mask for e in out] == [[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert metrics["response/masked_truncated"] == 2 / 5
    batch = Batch.from_episodes(out[:4], pad_id=0)
    adv, _ = rl_advantages(batch, CFG)
    std = torch.tensor(rewards).std().item()  # the group's statistics include the cut sample's reward -1
    expected = [(r - 0.25) / (std + CFG.grpo_epsilon) for r in rewards]
    assert torch.allclose(adv[:, 0], torch.tensor([expected[0], 0.0, expected[2], expected[3]]))
    assert adv[1].abs().sum() == 0
    # UFT: a cut hinted rollout keeps only its (SFT-trained) hint tokens, yet its reward stays in its group.
    hinted = [Episode(p, [1, 2, 3, 4], [1] * 4, reward=r, group_id=0, finished=f, hint_len=2)
              for r, f in zip([1.0, 0.0, 1.0], [True, False, True])]
    hinted = MaskTruncated().after_scoring(None, hinted, {})
    adv, _ = rl_advantages(Batch.from_episodes(hinted, pad_id=0), replace(CFG, demonstrations="hint"))
    scale = (1.0 - 2 / 3) / (torch.tensor([1.0, 0.0, 1.0]).std().item() + CFG.grpo_epsilon)
    assert torch.allclose(adv, torch.tensor([[0, 0, scale, scale], [0, 0, 0, 0], [0, 0, scale, scale]]))
    cfg = Config()
    assert not any(isinstance(h, MaskTruncated) for h in hooks_for(cfg))
    cfg.algorithm.mask_truncated, cfg.algorithm.group_filter = True, "dapo_nonuniform"
    assert isinstance(hooks_for(cfg)[-1], MaskTruncated)  # after dynamic sampling's extra rounds


def test_mask_truncated_end_to_end(short_counting_run):
    """Every response forced to the length limit: with the filter no token trains, without it they do."""
    import json
    from pathlib import Path

    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment

    norms = {}
    for flag in (False, True):
        over = short_counting_run(f"trainer.experiment_name=mask{flag}", f"algorithm.mask_truncated={str(flag).lower()}",
                                  "rollout.generate_kwargs={min_new_tokens: 6}")  # = max_new_tokens: no EOS
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/grad_norm" in ln]
        assert [r["response/clip_ratio"] for r in rows] == [1.0, 1.0]
        norms[flag] = [r["actor/grad_norm"] for r in rows]
        if flag:
            assert [r["response/masked_truncated"] for r in rows] == [1.0, 1.0]
    assert all(n > 0 for n in norms[False]) and norms[True] == [0.0, 0.0]


def test_overlong_penalty_measures_what_the_length_limit_counts():
    """Single-turn: the tokens generated after the prompt (a UFT hint is prompt; a cut rollout whose tokens
    mask_truncated masks is still long) against rollout.max_new_tokens. Multi-turn: every response token
    (turns and observations) against env.max_total_tokens, which ends an episode."""
    from rllava.config import Config
    from rllava.data.types import Episode, Prompt
    from rllava.pipelines.agentic import AgenticPipeline
    from rllava.pipelines.hooks import MaskTruncated
    from rllava.pipelines.rlvr import RLVRPipeline

    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.env.max_total_tokens = 20, 40
    cfg.algorithm.reward_shaping, cfg.algorithm.overlong_buffer_len = ["overlong_penalty"], 10
    p = Prompt(input_ids=[1, 2, 3])
    eps = [Episode(p, [5] * 18, [1] * 18, hint_len=8),  # 8 hinted + 10 generated
           Episode(p, [5] * 20, [1] * 20, finished=False),  # cut at the limit
           Episode(p, [5] * 15, [1] * 15)]
    eps = MaskTruncated().after_scoring(None, eps, {})
    assert RLVRPipeline(cfg).shape_scores(torch.ones(3), eps).tolist() == pytest.approx([1.0, 0.0, 0.5])
    turns = [Episode(p, [5] * 22, [1] * 8 + [0] * 6 + [1] * 8), Episode(p, [5] * 35, [1] * 8 + [0] * 6 + [1] * 21)]
    assert AgenticPipeline(cfg).shape_scores(torch.ones(2), turns).tolist() == pytest.approx([1.0, 0.5])


def test_remax_greedy_baseline_is_shaped_like_the_samples():
    """With overlong_penalty, a sample identical to the greedy rollout has advantage 0 (both shaped alike)."""
    from types import SimpleNamespace

    from rllava.algorithms import compute_advantages
    from rllava.config import Config
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.pipelines.hooks import GreedyBaseline
    from rllava.pipelines.rlvr import RLVRPipeline

    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.algorithm.adv_estimator = 20, "remax"
    cfg.algorithm.reward_shaping, cfg.algorithm.overlong_buffer_len = ["overlong_penalty"], 10
    pipe = RLVRPipeline(cfg)
    p = Prompt(input_ids=[1, 2, 3])
    samples = [Episode(p, [5] * 18, [1] * 18, reward=1.0), Episode(p, [6] * 4, [1] * 4, reward=1.0)]

    class AllRight:  # the reward role's interface: every response is correct
        def score(self, episodes):
            for e in episodes:
                e.reward = 1.0
            return {}

    rollout = SimpleNamespace(greedy_sampling=lambda: None, generate=lambda prompts, s: [Episode(p, [5] * 18, [1] * 18)])
    trainer = SimpleNamespace(ctx=SimpleNamespace(rollout=rollout, reward=AllRight()), pipeline=pipe)
    GreedyBaseline().after_rollout(trainer, samples, {})
    assert [e.baseline_reward for e in samples] == pytest.approx([0.2, 0.2])  # 1 - (18 - 10) / 10
    batch = Batch.from_episodes(samples, pad_id=0)
    batch.set_scores(pipe.shape_scores(batch.rewards, samples))
    adv, _ = compute_advantages(batch, cfg.algorithm)
    assert adv[:, 0].tolist() == pytest.approx([0.0, 0.8])


@pytest.mark.parametrize("mode", ["switch", "mix"])
def test_a_group_filter_with_switched_or_mixed_demonstrations_is_refused(mode):
    """The filter drops all-wrong groups before HPT's switch or LUFFY's mix sees them, and those are the groups the
    demonstration is for: HPT silently became plain DAPO."""
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.hooks import hooks_for

    cfg = load_config(None, [f"algorithm.demonstrations={mode}", "algorithm.sft_coef=1.0", "algorithm.policy_loss=luffy",
                             "algorithm.group_filter=dapo_nonuniform"])
    with pytest.raises(ConfigError, match=f"drops the all-wrong groups before algorithm.demonstrations={mode}"):
        hooks_for(cfg)


def test_dynamic_sampling_gives_every_round_fresh_group_ids():
    """Extra rounds' group ids follow the largest id so far (a fixed offset of 10 000 merged groups of rounds
    with more prompts than that). The rollout, reward and loader here are stand-ins: only the hook's own
    bookkeeping runs."""
    from types import SimpleNamespace

    from rllava.config import load_config
    from rllava.data.types import Episode, Prompt
    from rllava.pipelines.hooks import DynamicSampling, group_list

    size = 10_001
    cfg = load_config(None, [f"data.batch_size={size}", "algorithm.group_filter=dapo_nonuniform",
                             "algorithm.max_filter_tries=3"])

    def generate(prompts, sampling, group_offset=0):
        return [Episode(prompt=p, group_id=group_offset + i) for i, p in enumerate(prompts) for _ in range(2)]

    def score(episodes):  # only prompts 0 and 10 000 of each round have a spread: 2 groups kept a round
        for k, e in enumerate(episodes):
            e.reward = float(k % 2) if e.prompt.index in (0, 10_000) else 0.0
        return {}

    prompts = [Prompt(input_ids=[1], index=i) for i in range(size)]
    ctx = SimpleNamespace(rollout=SimpleNamespace(train_sampling=lambda: None, generate=generate),
                          reward=SimpleNamespace(score=score), loader=SimpleNamespace(next_batch=lambda: prompts))
    first = generate(prompts, None)
    score(first)
    kept = DynamicSampling().after_scoring(SimpleNamespace(cfg=cfg, ctx=ctx), first, {})
    assert len(kept) == 16 and [len(g) for g in group_list(kept)] == [2] * 8  # 4 rounds x 2 groups, none merged
