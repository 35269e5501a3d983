"""Batch-level advantage statistics (whitening, GPG's alpha) are the whole step's under torchrun: 2 gloo
ranks, each holding part of the batch, give the advantages one process gives on all of it; and every
estimator runs on a rank left with no row (it is a collective there)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dist_scripts.launch import start_torchrun, wait_torchrun

from rllava.algorithms import ADVANTAGES
from rllava.config import AlgorithmConfig

ESTIMATORS = ["reinforce_plus_plus", "reinforce_plus_plus_baseline", "gae", "vapo_gae", "gpg", "grpo_batch_std", "grpo"]
# Rank 0: one group of 3; rank 1: a group of 2 and a single-sample group. Rewards, lengths, values.
RANK_ROWS = [
    ([1.0, 0.0, 0.5], [0, 0, 0], [3, 1, 2]),
    ([1.0, 0.0, 0.2], [1, 1, 2], [2, 4, 3]),
]
WIDTH = 4


def make_batch(rewards: list[float], groups: list[int], lengths: list[int]) -> SimpleNamespace:
    """Score at each response's last token, and a fixed made-up critic value per token."""
    mask = torch.zeros(len(rewards), WIDTH)
    token_rewards = torch.zeros(len(rewards), WIDTH)
    for i, (r, n) in enumerate(zip(rewards, lengths)):
        mask[i, :n] = 1.0
        token_rewards[i, n - 1] = r
    values = (torch.arange(WIDTH)[None, :] * 0.1 + torch.tensor(rewards)[:, None] * 0.3) * mask
    return SimpleNamespace(token_rewards=token_rewards, response_mask=mask, group_ids=torch.tensor(groups),
                           values=values)


WORKER = '''
import json, sys
import torch
from rllava.algorithms import ADVANTAGES
from rllava.config import AlgorithmConfig
from rllava.engines import distributed as du
sys.path.insert(0, {tests!r})
from test_batch_statistics import ESTIMATORS, RANK_ROWS, make_batch

du.init_distributed()
out = {{}}
for name in ESTIMATORS:
    adv, _ = ADVANTAGES.get(name)(make_batch(*RANK_ROWS[du.rank()]), AlgorithmConfig())
    out[name] = du.gather_objects(adv.tolist())
    empty = make_batch([], [], []) if du.rank() == 1 else make_batch(*RANK_ROWS[0])
    ADVANTAGES.get(name)(empty, AlgorithmConfig())  # rank 1 has no row left: it still takes part
if du.rank() == 0:
    open({out!r}, "w").write(json.dumps(out))
du.destroy_distributed()
'''


def test_two_ranks_give_the_advantages_of_one_process(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "adv.json"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(Path(__file__).parent), out=str(out))))
    wait_torchrun(start_torchrun([str(script)], tmp_path / "log.txt"), tmp_path / "log.txt", timeout=120)
    ranks = json.loads(out.read_text())
    whole = make_batch(*(sum((list(rows[k]) for rows in RANK_ROWS), []) for k in range(3)))
    for name in ESTIMATORS:
        one, _ = ADVANTAGES.get(name)(whole, AlgorithmConfig())
        two = torch.tensor(ranks[name][0] + ranks[name][1])
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6, msg=name)
    # and the per-rank statistics would have differed: whitening rank 1's rows alone gives other values
    alone, _ = ADVANTAGES.get("reinforce_plus_plus")(make_batch(*RANK_ROWS[1]), AlgorithmConfig())
    assert not torch.allclose(alone, torch.tensor(ranks["reinforce_plus_plus"][1]), atol=1e-3)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_every_estimator_takes_a_batch_with_no_row(name):
    empty = make_batch([], [], [])
    empty.baseline_rewards = torch.zeros(0)
    adv, returns = ADVANTAGES.get(name)(empty, AlgorithmConfig())
    assert adv.shape == (0, WIDTH) and (returns is None or returns.shape == (0, WIDTH))
