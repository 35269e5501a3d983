"""Switches that meet in one step: two-step runs of combinations (three of these used to crash)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rllava.config import load_config
from rllava.pipelines.run import run_experiment

DEMO = "data.response_template={{ answer }}"
COMBINATIONS = [
    # used to crash: DAPO's extra rounds skipped ReMax's greedy baseline
    ["algorithm.adv_estimator=remax", "algorithm.group_filter=dapo_nonuniform", "algorithm.max_filter_tries=2",
     "algorithm.top_entropy_frac=0.3", "algorithm.mask_truncated=true", "model.lora_rank=4", "actor.ppo_epochs=2"],
    # used to crash: ReMax + LUFFY demonstrations without a baseline; and HPT leaving the critic no rollout
    ["algorithm.adv_estimator=remax", "algorithm.policy_loss=luffy", "algorithm.demonstrations=mix", DEMO,
     "data.drop_solved=1.0", "reward.workers=1"],
    ["algorithm.adv_estimator=gae", "algorithm.demonstrations=switch", "algorithm.sft_coef=0.5", DEMO,
     "algorithm.kl_coef=0.05", "algorithm.kl_in=reward", "critic.pretrain_steps=1"],
    ["algorithm.policy_loss=gspo", "algorithm.loss_agg_mode=seq-mean-token-sum-norm", "algorithm.kl_coef=0.05",
     "reference.sync_steps=1", "reference.sync_alpha=0.5", "model.dtype=bfloat16", "actor.micro_token_budget=16",
     "actor.share_prompt=false", "model.gradient_checkpointing=true"],
    ["algorithm.adv_estimator=reinforce_plus_plus_baseline", "algorithm.policy_loss=clip_cov", "rollout.n=1",
     "algorithm.demonstrations=sft", "algorithm.sft_coef=0.5", DEMO, "algorithm.top_entropy_frac=0.2"],
    ["algorithm.adv_estimator=grpo_passk", "algorithm.policy_loss=cispo", "actor.optimizer_offload=true",
     "algorithm.demonstrations=hint", "algorithm.hint_steps=2", "algorithm.sft_coef=0.5", DEMO, "data.drop_solved=1.0"],
]


@pytest.mark.parametrize("extra", COMBINATIONS, ids=lambda e: e[0].split("=")[1] + "+" + e[1].split("=")[1])
def test_two_steps_run_and_stay_finite(short_counting_run, extra):
    result = run_experiment(load_config(None, short_counting_run(*extra)))
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2] and any("actor/grad_norm" in r for r in steps)
    for r in steps:
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        assert not bad, bad
