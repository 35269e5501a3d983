"""data.drop_solved: solved prompts leave the loader (and stay out across a resume); the others keep coming."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import ConfigError, load_config
from rllava.data.loader import PromptLoader
from rllava.pipelines.run import run_experiment


def indices(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_retired_prompts_are_passed_over_and_resume_exactly(caplog):
    loader = PromptLoader(list(range(10)), batch_size=3, seed=1)
    first = loader.next_batch()
    assert loader.retire([0, 1, 2, 3]) == 4
    state = loader.state_dict()
    later = indices([loader.next_batch() for _ in range(6)])
    assert not {0, 1, 2, 3} & set(later) and set(later) == set(range(4, 10))
    resumed = PromptLoader(list(range(10)), batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert indices([resumed.next_batch() for _ in range(6)]) == later
    assert loader.retire(list(range(10))) == 3  # at least one batch's worth always stays
    assert "the last 3 stay in play" in caplog.text
    assert len(set(indices([loader.next_batch() for _ in range(4)]))) == 3 and len(first) == 3
    with pytest.raises(ConfigError, match="drop_solved=0"):
        load_config(None, ["data.drop_solved=0"])


SEEN_REWARD = '''
import json, os

def reward(response, answer, **row):
    """Accuracy 1 on even ids (solved), 0 on odd ones; records which rows were scored."""
    with open(os.environ["SEEN_FILE"], "a") as f:
        f.write(json.dumps(row["id"]) + "\\n")
    ok = float(row["id"] % 2 == 0)
    return {"overall": ok, "accuracy": ok}
'''


def test_solved_prompts_are_rolled_out_once(short_counting_run, tmp_path, monkeypatch):
    """12 rows (10 train), 2 prompts a step, 10 steps = 2 epochs: even ids are solved at first sight and retired."""
    plugin, seen = tmp_path / "seen_reward.py", tmp_path / "seen.jsonl"
    plugin.write_text(SEEN_REWARD)
    monkeypatch.setenv("SEEN_FILE", str(seen))
    over = short_counting_run("trainer.experiment_name=retire", f"reward.functions={{'{plugin}:reward': 1.0}}",
                              "data.drop_solved=1.0", "trainer.total_steps=10", "trainer.save_freq=0")
    result = run_experiment(load_config(None, over))
    ids = [json.loads(ln) for ln in seen.read_text().splitlines()]
    even, odd = [i for i in set(ids) if i % 2 == 0], [i for i in set(ids) if i % 2 == 1]
    assert even and odd
    assert all(ids.count(i) == 4 for i in even)  # one group of rollout.n=4, never again
    assert all(ids.count(i) > 4 for i in odd)  # back every epoch
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/retired"] == len(even)


def test_hinted_rollouts_do_not_retire_their_prompt(short_counting_run):
    """UFT: a rollout that starts from (here: all of) the reference answer is right for the hint's sake, not the
    policy's; it must not retire a prompt the policy alone never solves."""
    over = short_counting_run("data.drop_solved=1.0", "algorithm.demonstrations=hint", "algorithm.hint_steps=4",
                              "algorithm.hint_ratio_high=1.0", "algorithm.hint_ratio_low=1.0", "algorithm.sft_coef=1.0",
                              "data.response_template='<answer>{{ answer }}</answer>'", "trainer.experiment_name=hinted")
    run = Path(run_experiment(load_config(None, over))["run_dir"])
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "data/retired" in ln]
    assert [r["reward/mean"] for r in rows] == [1.0, 1.0]  # the whole answer is hinted: every rollout is right
    assert [r["data/retired"] for r in rows] == [0.0, 0.0]
