"""Forking-token selection (algorithm.top_entropy_frac): hand values, demonstrations, ranks, and batch splits."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import start_torchrun, wait_torchrun

from rllava.algorithms import entropy_threshold, top_entropy_mask
from rllava.config import AlgorithmConfig, ConfigError, load_config
from rllava.data.types import Batch, Episode, Prompt
from rllava.pipelines.rlvr import forking_tokens
from rllava.pipelines.run import run_experiment


def test_threshold_and_mask_by_hand():
    h = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7])
    assert entropy_threshold(h, 0.4) == pytest.approx(0.7)  # ceil(0.4 * 5) = 2 tokens: 0.9 and 0.7
    assert entropy_threshold(h, 0.41) == pytest.approx(0.5)  # ceil(2.05) = 3
    assert entropy_threshold(h, 1.0) == pytest.approx(0.1)  # everything
    assert entropy_threshold(h, 1e-9) == pytest.approx(0.9)  # at least one token
    assert entropy_threshold(torch.tensor([0.2, 0.2, 0.2]), 0.1) == pytest.approx(0.2)  # ties are all kept
    assert entropy_threshold(torch.tensor([]), 0.2) == float("inf")
    ent = torch.tensor([[0.9, 0.1, 0.8], [0.95, 0.7, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token is padding
    assert top_entropy_mask(ent, mask, 0.75).tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ConfigError, match="top_entropy_frac=0"):
        load_config(None, ["algorithm.top_entropy_frac=0"])


def batch_of(rows: list[list[int]], expert: list[bool]) -> Batch:
    p = Prompt(input_ids=[7, 8])
    return Batch.from_episodes([Episode(p, [5] * len(m), m, group_id=0, is_expert=x) for m, x in zip(rows, expert)], 0)


def test_sft_only_demonstrations_are_not_in_the_population():
    """With demonstrations trained by the SFT term alone, their tokens neither count nor get picked."""
    batch = batch_of([[1, 1, 1], [1, 1, 0], [1, 1, 1]], expert=[False, False, True])
    entropy = torch.tensor([[0.2, 0.4, 0.6], [0.8, 0.1, 5.0], [9.0, 9.0, 9.0]])  # row 1's 5.0 is an env token
    metrics = {}
    keep = forking_tokens(batch, entropy, AlgorithmConfig(top_entropy_frac=0.4, demonstrations="sft"), metrics)
    assert keep.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # top 2 of the 5 RL tokens
    assert metrics["adv/entropy_threshold"] == pytest.approx(0.6) and metrics["adv/kept_token_frac"] == pytest.approx(0.4)
    mixed = forking_tokens(batch, entropy, AlgorithmConfig(top_entropy_frac=0.4, demonstrations="mix"), {})
    assert mixed[2].tolist() == [1.0, 1.0, 1.0]  # LUFFY: demonstrations are RL tokens, and these are the top 3


WORKER = '''
import json, sys
import torch
from rllava.config import AlgorithmConfig
from rllava.engines import distributed as du
from rllava.pipelines.rlvr import forking_tokens
sys.path.insert(0, {tests!r})
from test_token_selection import batch_of, RANK_ROWS

du.init_distributed()
rows, entropy = RANK_ROWS[du.rank()]
metrics = {{}}
keep = forking_tokens(batch_of(rows, [False] * len(rows)), torch.tensor(entropy), AlgorithmConfig(top_entropy_frac=0.25), metrics)
if du.rank() == 0:
    open({out!r}, "w").write(json.dumps(metrics))
du.destroy_distributed()
'''
RANK_ROWS = [([[1, 1, 1, 1]], [[0.1, 0.9, 0.2, 0.3]]), ([[1, 1, 0, 0], [1, 1, 1, 1]], [[0.8, 0.7, 0.0, 0.0], [0.4, 0.5, 0.6, 0.05]])]


def test_two_ranks_use_the_threshold_of_the_whole_batch(tmp_path):
    """gloo, 2 ranks: the threshold is the quantile over both ranks' tokens, as in one process."""
    script, out = tmp_path / "worker.py", tmp_path / "metrics.json"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(Path(__file__).parent), out=str(out))))
    wait_torchrun(start_torchrun([str(script)], tmp_path / "log.txt"), tmp_path / "log.txt", timeout=120)
    ranks = json.loads(out.read_text())
    tokens = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.7, 0.4, 0.5, 0.6, 0.05])  # the 10 trained tokens of both ranks
    assert ranks["adv/entropy_threshold"] == pytest.approx(entropy_threshold(tokens, 0.25)) == pytest.approx(0.7)
    assert ranks["adv/kept_token_frac"] == pytest.approx(0.25)  # rank 0 holds one of the 3 kept tokens (0.9) among its 4


def test_selection_does_not_depend_on_micro_batching(short_counting_run):
    """Top 25 % of tokens, two micro-batch budgets: the same tokens train, so the same loss and gradient."""
    rows = {}
    for budget in (8, 4096):
        over = short_counting_run(f"trainer.experiment_name=b{budget}", "algorithm.top_entropy_frac=0.25",
                                  f"actor.micro_token_budget={budget}", "reward.functions={count: 1.0, number_format: 1.0}",
                                  "rollout.temperature=0.02")  # a random model is near uniform: sharpen it so entropies differ
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[budget] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/loss" in ln]
    for a, b in zip(rows[8], rows[4096]):
        assert a["adv/entropy_threshold"] == pytest.approx(b["adv/entropy_threshold"], rel=1e-4)
        assert a["adv/kept_token_frac"] == b["adv/kept_token_frac"]
        assert 0.25 <= a["adv/kept_token_frac"] < 0.35
        assert a["actor/loss"] == pytest.approx(b["actor/loss"], rel=1e-4, abs=1e-7)
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-4)
        assert a["actor/grad_norm"] > 0


def test_keeping_every_token_changes_nothing(short_counting_run):
    """top_entropy_frac=1 is the default: no extra pass, identical metrics."""
    rows = {}
    for name, extra in (("default", []), ("one", ["algorithm.top_entropy_frac=1.0"])):
        run = Path(run_experiment(load_config(None, short_counting_run(f"trainer.experiment_name={name}", *extra)))["run_dir"])
        rows[name] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows["default"]]
    assert strip == [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows["one"]]
    assert all("time/old_logprobs" not in r for r in rows["one"])


def test_entropy_shaped_advantages_by_hand():
    """Cheng et al. 2025: A + min(alpha * H, |A| / kappa), alpha 0.4, kappa 2; no bonus where A = 0."""
    from rllava.algorithms import entropy_shaped_advantages

    adv = torch.tensor([[1.0, -0.5, 0.0], [0.2, 0.0, 0.0]])
    ent = torch.tensor([[0.5, 3.0, 9.0], [2.0, 1.0, 0.0]], requires_grad=True)
    out = entropy_shaped_advantages(adv, ent, 0.4, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.2, -0.25, 0.0], [0.3, 0.0, 0.0]]))
    assert not out.requires_grad  # no gradient through the entropy
    with pytest.raises(ConfigError, match="entropy_adv_kappa"):
        load_config(None, ["algorithm.entropy_adv_kappa=1.0"])


def test_entropy_bonus_in_a_run(short_counting_run):
    """The bonus is logged, positive where rewards spread, and at most half the mean |advantage| (kappa = 2);
    with it the update differs from the same run without it."""
    rows = {}
    for coef in (0.0, 0.4):
        over = short_counting_run(f"trainer.experiment_name=e{coef}", f"algorithm.entropy_adv_coef={coef}",
                                  "reward.functions={count: 1.0, number_format: 1.0}", "rollout.temperature=1.0")
        run = Path(run_experiment(load_config(None, over))["run_dir"])
        rows[coef] = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "actor/loss" in ln]
    assert all("adv/entropy_bonus_mean" not in r for r in rows[0.0]) and all(r["adv/entropy_bonus_mean"] > 0 for r in rows[0.4])
    off, on = rows[0.0][0], rows[0.4][0]  # step 1: the same rollouts and advantages before the bonus
    assert 0 < on["adv/entropy_bonus_mean"] <= 0.5 * off["adv/abs_mean"] + 1e-6
    assert on["actor/grad_norm"] != pytest.approx(off["actor/grad_norm"], rel=1e-6)
