"""reference.sync_steps / sync_alpha: the KL reference moves to the policy, by hand, end to end and across a resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rllava.config import Config, ConfigError, load_config
from rllava.models.weights import hf_weights
from rllava.pipelines.run import run_experiment
from rllava.roles.reference import Reference


def test_sync_by_hand(tiny_model_factory):
    from transformers import AutoModelForImageTextToText

    path = tiny_model_factory("qwen2_vl")
    policy = AutoModelForImageTextToText.from_pretrained(path)
    ref = Reference(AutoModelForImageTextToText.from_pretrained(path), Config(), "cpu", None)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in ref.model.named_parameters()}
    ref.sync(hf_weights(policy), alpha=0.25)
    for n, p in ref.model.named_parameters():
        expected = 0.25 * dict(policy.named_parameters())[n].detach() + 0.75 * before[n]
        assert torch.allclose(p, expected, atol=1e-6), n
    ref.sync(hf_weights(policy), alpha=1.0)
    assert all(torch.equal(p, q) for p, q in zip(ref.model.parameters(), policy.parameters()))


def test_sync_settings_are_checked():
    with pytest.raises(ConfigError, match="algorithm.kl_coef=0"):
        load_config(None, ["reference.sync_steps=2"])
    with pytest.raises(ConfigError, match="sync_alpha=0"):
        load_config(None, ["reference.sync_steps=2", "reference.sync_alpha=0", "algorithm.kl_coef=0.1"])
    with pytest.raises(ConfigError, match="LoRA reference"):
        load_config(None, ["reference.sync_steps=2", "algorithm.kl_coef=0.1", "model.lora_rank=4"])


def metrics(result: dict) -> list[dict]:
    rows = (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, rows) if "actor/kl_loss" in r]


def test_a_reset_every_step_keeps_the_kl_at_zero(short_counting_run):
    """Synced after every update, the reference is the policy the next step starts from: its KL loss is 0."""
    kl = {}
    for sync in (0, 1):
        over = short_counting_run(f"trainer.experiment_name=s{sync}", "algorithm.kl_coef=0.1", f"reference.sync_steps={sync}",
                                  "trainer.total_steps=3", "trainer.save_freq=0")
        kl[sync] = [r["actor/kl_loss"] for r in metrics(run_experiment(load_config(None, over)))]
    assert kl[0][0] == pytest.approx(0, abs=1e-9) and all(k > 1e-5 for k in kl[0][1:])  # the policy moved away
    assert all(abs(k) < 1e-7 for k in kl[1])


def test_resume_restores_the_moved_reference(short_counting_run):
    """A soft-synced reference is checkpointed: a run stopped at step 2 and resumed ends like a straight run."""
    common = ("algorithm.kl_coef=0.1", "reference.sync_steps=2", "reference.sync_alpha=0.5", "trainer.save_freq=2")
    straight = run_experiment(load_config(None, short_counting_run("trainer.experiment_name=a", *common,
                                                                   "trainer.total_steps=4")))
    run_experiment(load_config(None, short_counting_run("trainer.experiment_name=b", *common, "trainer.total_steps=2")))
    resumed = run_experiment(load_config(None, short_counting_run("trainer.experiment_name=b", *common,
                                                                  "trainer.total_steps=4")))
    a, b = metrics(straight), metrics(resumed)
    assert [r["actor/kl_loss"] for r in a] == [r["actor/kl_loss"] for r in b] and a[2]["actor/kl_loss"] > 0
    assert (Path(resumed["run_dir"]) / "checkpoints" / "step_4" / "reference.safetensors").exists()
