"""A run's checkpoints, best checkpoint, counters and settings across resumes, branches and bad values."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from rllava.config import ConfigError, load_config
from rllava.data.rows import DataError
from rllava.pipelines.checkpoint import latest_checkpoint, list_checkpoints, load_state
from rllava.pipelines.run import run_experiment

FAST = ("rollout.n=2", "rollout.max_new_tokens=4")


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def set_aside(run: Path) -> list[dict[str, float]]:
    """Each set-aside batch under checkpoints/abandoned/, oldest first: step name -> the lr it was trained with."""
    batches = sorted((run / "checkpoints" / "abandoned").iterdir())
    return [{p.name: load_state(p)["config"]["actor"]["lr"] for p in sorted(b.iterdir())} for b in batches]


def test_resuming_from_an_older_checkpoint_branches_the_run(short_counting_run, tmp_path):
    """Resume from step 2 of a run that reached step 4 (with another lr): the abandoned run's steps 3-4 are set
    aside, so keep_last counts only the branch's checkpoints (the one resumed from stays until the next save) and
    trainer.resume=auto later continues the branch, not the abandoned run. A resume that is refused (here: the data
    changed) sets nothing aside: it used to, before loading, leaving resume=auto to go on from step 2."""
    run = tmp_path / "r"
    common = ("trainer.experiment_name=r", "trainer.save_freq=1", *FAST)
    run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=4", "trainer.keep_last=4")))
    assert [s for s, _ in list_checkpoints(run)] == [1, 2, 3, 4]
    small = tmp_path / "data" / "small.parquet"
    pd.read_parquet(tmp_path / "data" / "train.parquet").head(6).to_parquet(small)
    with pytest.raises(DataError, match="the data changed since the checkpoint"):
        run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=4", f"data.train_files={small}",
                                                            f"trainer.resume={run / 'checkpoints' / 'step_2'}")))
    assert [s for s, _ in list_checkpoints(run)] == [1, 2, 3, 4] and not (run / "checkpoints" / "abandoned").exists()
    run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=3", "trainer.keep_last=2",
                                                        "actor.lr=5e-4",
                                                        f"trainer.resume={run / 'checkpoints' / 'step_2'}")))
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    assert load_state(latest_checkpoint(run))["config"]["actor"]["lr"] == 5e-4  # what resume=auto continues
    assert set_aside(run) == [{"step_3": 1e-3, "step_4": 1e-3}]
    assert next((run / "checkpoints" / "abandoned").iterdir()).name.endswith("-after_step_2")
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]


def test_keep_best_keeps_the_best_saved_checkpoint(short_counting_run, tmp_path):
    """Validation every step, a checkpoint every 2: the best validation (step 3) has no checkpoint, so the best
    *saved* one (step 2) is kept and reported, not pruned for a folder that never existed. The validation scores
    are scripted by a reward plugin that scores the validation row (id 1000) from a list."""
    plugin = tmp_path / "scripted.py"
    plugin.write_text("SCORES = [0.2, 0.8, 0.9, 0.3, 0.2, 0.1]  # the validations at steps 1..6\n"
                      "calls = []\n\n\n"
                      "def reward(response, answer, id, **row):\n"
                      "    if id != 1000:  # a train row\n        return 0.0\n"
                      "    calls.append(id)\n    return SCORES[len(calls) - 1]\n")
    data = tmp_path / "data"
    pd.read_parquet(data / "val.parquet").head(1).assign(id=1000).to_parquet(data / "scripted_val.parquet")
    result = run_experiment(load_config(None, short_counting_run(
        *FAST, f"data.val_files={data / 'scripted_val.parquet'}", f"reward.functions={{'{plugin}:reward': 1.0}}",
        "trainer.total_steps=6", "trainer.val_before_train=false", "trainer.val_freq=1", "trainer.save_freq=2",
        "trainer.keep_last=1", "trainer.keep_best=true")))
    run = Path(result["run_dir"])
    assert [r["val/accuracy"] for r in metrics(run)] == [0.2, 0.8, 0.9, 0.3, 0.2, 0.1]
    assert [s for s, _ in list_checkpoints(run)] == [2, 6]
    assert result["best_val_accuracy"] == 0.8
    assert load_state(run / "checkpoints" / "step_6")["best"] == (0.8, 2)


def test_bad_best_metric_or_keep_last_fails_before_training(short_counting_run, tmp_path):
    """trainer.best_metric used to be checked at the first validation (here: after the last step, before the final
    checkpoint, losing the run); trainer.keep_last=0 deleted every checkpoint, the final one too."""
    data = tmp_path / "data"
    val = (f"data.val_files={data / 'val.parquet'}", "trainer.val_before_train=false")
    with pytest.raises(ConfigError, match="trainer.best_metric='val/pass@1' is not among the validation metrics"):
        run_experiment(load_config(None, short_counting_run(*FAST, *val, "trainer.best_metric=val/pass@1",
                                                            "trainer.experiment_name=metric")))
    with pytest.raises(ConfigError, match="trainer.keep_last=0: must be >= 1"):
        run_experiment(load_config(None, short_counting_run(*FAST, "trainer.keep_last=0", "trainer.experiment_name=k")))
    for name in ("metric", "k"):
        assert not (tmp_path / name / "metrics.jsonl").exists() and not (tmp_path / name / "checkpoints").exists()


def test_reward_error_totals_go_on_after_a_resume(short_counting_run, tmp_path):
    """reward/errors_total counts over the whole run: a resumed run goes on from the checkpoint's count."""
    plugin = tmp_path / "flaky.py"
    plugin.write_text("def reward(response, answer, id, **row):\n"
                      "    if id % 3 == 0:\n        raise RuntimeError('reward server down')\n"
                      "    return float(response.strip() == answer)\n")
    over = (*FAST, f"reward.functions={{'{plugin}:reward': 1.0}}", "trainer.experiment_name=flaky")
    run_experiment(load_config(None, short_counting_run(*over, "trainer.total_steps=2")))
    assert load_state(tmp_path / "flaky" / "checkpoints" / "step_2")["reward"] == [{"n_errors": sum(
        r["reward/errors"] for r in metrics(tmp_path / "flaky"))}]
    run_experiment(load_config(None, short_counting_run(*over, "trainer.total_steps=4")))  # trainer.resume=auto
    rows = metrics(tmp_path / "flaky")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[1]["reward/errors_total"] > 0
    running = [sum(r["reward/errors"] for r in rows[: i + 1]) for i in range(len(rows))]
    assert [r["reward/errors_total"] for r in rows] == running


def test_a_non_finite_reward_part_is_a_failure(tmp_path):
    """A reward whose accuracy (or other key) is inf or NaN is scored on_error and counted, as a non-finite
    overall score is: it would otherwise poison the accuracy and pass@k means."""
    from rllava.rewards import RewardFunction

    plugin = tmp_path / "inf.py"
    plugin.write_text("def reward(response, answer, **row):\n"
                      "    return {'overall': 1.0, 'accuracy': float(response)}\n")
    fn = RewardFunction({f"{plugin}:reward": 1.0}, on_error=-1.0)
    scores, infos, n_errors = fn(["inf", "nan", "1"], [{"answer": "1"}] * 3)
    assert scores == [-1.0, -1.0, 1.0] and n_errors == 2
    assert [i.get("accuracy") for i in infos] == [0.0, 0.0, 1.0]  # a failed row is not a correct one


def test_a_reward_model_score_of_inf_is_counted_like_nan():
    """The reward model's NaN counted as an error and scored on_error; inf passed through into the advantages.
    The shipped classifier and judge already return finite scores or NaN: a stand-in model returns inf here."""
    from rllava.data.types import Episode, Prompt
    from rllava.roles.reward import RewardScorer

    class InfModel:  # a reward model that outputs inf (e.g. an overflowing plugin scorer)
        def score(self, queries, responses, metas, images):
            return [math.inf, -math.inf, 0.5]

    cfg = load_config(None, ["reward.functions={count: 1.0}", "reward.on_error=0.0"]).reward
    scorer = RewardScorer(cfg)
    scorer.model, scorer.model_weight = InfModel(), 1.0
    episodes = [Episode(prompt=Prompt(input_ids=[1], query="q", meta={"answer": "7"}), response_ids=[2],
                        response_text=t) for t in ("a", "b", "c")]  # the count reward scores each 0
    out = scorer.score(episodes)
    assert [e.reward for e in episodes] == [0.0, 0.0, 0.5]
    assert out["reward/errors"] == 2.0 and out["reward/errors_total"] == 2.0
    assert scorer.state_dict() == {"n_errors": 2}


def test_a_fresh_start_sets_the_earlier_runs_checkpoints_aside(short_counting_run, tmp_path):
    """trainer.resume=none in a used run folder: its logs are cleared, and its checkpoints move to a folder of their
    own under checkpoints/abandoned/, so a later resume=auto continues the new run, not the earlier one. A second
    fresh start keeps the first one's set-aside checkpoints: its own step_N used to replace theirs."""
    from rllava.pipelines.evaluate import model_folders

    run = tmp_path / "f"
    common = ("trainer.experiment_name=f", "trainer.save_freq=1", *FAST)
    run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=3", "trainer.keep_last=3")))
    run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=1", "trainer.resume=none",
                                                        "actor.lr=5e-4")))
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert set_aside(run) == [{"step_1": 1e-3, "step_2": 1e-3, "step_3": 1e-3}]
    result = run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=2", "trainer.resume=auto",
                                                                 "actor.lr=5e-4")))
    assert result["steps"] == 2 and [r["step"] for r in metrics(run)] == [1, 2]
    assert load_state(latest_checkpoint(run))["config"]["actor"]["lr"] == 5e-4
    run_experiment(load_config(None, short_counting_run(*common, "trainer.total_steps=1", "trainer.resume=none",
                                                        "actor.lr=2e-4")))
    assert set_aside(run) == [{"step_1": 1e-3, "step_2": 1e-3, "step_3": 1e-3}, {"step_1": 5e-4, "step_2": 5e-4}]
    assert [load_state(p)["config"]["actor"]["lr"] for _, p in list_checkpoints(run)] == [2e-4]
    assert model_folders(str(run)) == [str(run / "checkpoints" / "step_1" / "model")]  # `rllava eval` of the run
