"""`reward.by_source`: rows of each data source scored by their own reward functions (veRL's data_source dispatch)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import ConfigError, RewardConfig, load_config
from rllava.rewards import RewardFunction
from rllava.roles.reward import check_sources

COUNTING, GEOMETRY = {"answer": "3", "data_source": "counting"}, {"answer": "2.5", "data_source": "geometry"}


def test_each_row_is_scored_by_its_sources_functions():
    fn = RewardFunction({"exact_match": 1.0}, by_source={"counting": {"count": 1.0, "number_format": 0.5}})
    responses = ["<answer>3</answer>", "<answer>2.5</answer>", "<answer>four</answer>"]
    scores, infos, n_errors = fn(responses, [COUNTING, GEOMETRY, COUNTING])
    # counting: count 1 + 0.5 x number_format 1; geometry (not in by_source): exact_match 1.
    assert scores[:2] == [1.5, 1.0] and n_errors == 0
    assert set(infos[0]) == {"count", "number_format", "accuracy", "overall"}
    assert set(infos[1]) == {"exact_match", "accuracy", "overall"}
    assert infos[2]["count"] == 0.0 and scores[2] == 0.5 * infos[2]["number_format"]
    # A response whose scoring never finished: its own source's components, each on_error.
    assert fn.failed(COUNTING) == (1.5 * 0.0, {"count": 0.0, "accuracy": 0.0, "number_format": 0.0, "overall": 0.0})
    bad = RewardFunction({"exact_match": 1.0}, on_error=-1.0, by_source={"counting": {"count": 2.0}})
    assert bad.failed(COUNTING)[0] == -2.0 and bad.failed(GEOMETRY)[0] == -1.0


def test_sources_without_a_default_and_kwargs_of_routed_functions():
    fn = RewardFunction({}, by_source={"counting": {"count": 1.0}, "grounding": {"iou": 1.0}},
                        kwargs={"iou": {"threshold": 0.5}})
    assert list(fn.fns) == ["count", "iou"] and fn.kwargs["iou"] == {"threshold": 0.5}
    with pytest.raises(ConfigError, match=r"reward.kwargs names \['detection'\], which reward.functions or "
                                          r"reward.by_source does not"):
        RewardFunction({"math": 1.0}, by_source={"counting": {"count": 1.0}}, kwargs={"detection": {}})
    with pytest.raises(ConfigError, match="reward.functions is empty"):
        RewardFunction({})


def test_the_config_checks_by_source():
    cfg = load_config(None, ["reward.functions={}", "reward.by_source={counting: {count: 1.0}, geometry: {math: 1}}"])
    assert cfg.reward.by_source == {"counting": {"count": 1.0}, "geometry": {"math": 1}}
    with pytest.raises(ConfigError, match=r"reward.by_source.counting=\{\}: give reward functions with weights"):
        load_config(None, ["reward.by_source={counting: {}}"])
    with pytest.raises(ConfigError, match="reward.functions is empty and there is no reward.model"):
        load_config(None, ["reward.functions={}"])


def test_every_source_needs_a_reward_and_every_entry_a_source():
    sources = {"train": ["counting", "geometry"], "val": ["counting"]}
    check_sources(RewardConfig(functions={"math": 1.0}, by_source={"counting": {"count": 1.0}}), sources)
    check_sources(RewardConfig(functions={}, by_source={"counting": {"count": 1.0}, "geometry": {"math": 1.0}}), sources)
    with pytest.raises(ConfigError, match=r"reward.by_source names \['countng'\], which no prompt comes from; "
                                          r"the data's sources are \['counting', 'geometry'\]"):
        check_sources(RewardConfig(by_source={"countng": {"count": 1.0}}), sources)
    with pytest.raises(ConfigError, match=r"train data source\(s\) \['geometry'\] have no reward"):
        check_sources(RewardConfig(functions={}, by_source={"counting": {"count": 1.0}}), sources)
    # A reward model scores every row, so sources outside by_source are still covered.
    check_sources(RewardConfig(functions={}, model="rm", by_source={"counting": {"count": 1.0}}), sources)


def test_a_config_folder_of_a_downloaded_repo_is_named_after_the_repo(tmp_path):
    from rllava.data.dataset import data_source
    from rllava.tasks.layouts import make_task_in_layout

    repo = make_task_in_layout("arithmetic", "gsm8k", tmp_path / "gsm8k", n=20)
    assert (repo / "README.md").is_file()  # as a download of the repo has
    assert data_source(f"{repo / 'main'}@test") == "gsm8k"
    assert data_source(f"{repo / 'socratic'}@train") == "gsm8k"
    assert data_source(f"{repo}@train") == "gsm8k"
    assert data_source("hiyouga/geometry3k@test") == "geometry3k"


PLUGIN = '''
def counting_reward(response, answer, data_source, **row):
    assert data_source == "counting", data_source  # a wrongly routed row raises: counted in reward/errors
    return {"overall": 1.0, "accuracy": 1.0}

def geometry_reward(response, answer, data_source, **row):
    assert data_source == "geometry", data_source
    return 0.25
'''


def test_a_mixed_run_scores_each_source_with_its_own_rewards(tiny_model_factory, tmp_path, capsys):
    """Counting and geometry prompts in one run; each reward asserts the source of the rows it is given."""
    from rllava.cli import main
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    counting = make_task("counting", tmp_path / "counting", n=12, seed=0)
    geometry = make_task("geometry", tmp_path / "geometry", n=12, seed=0)
    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    routes = f"reward.by_source={{counting: {{{plugin}:counting_reward: 1.0}}, geometry: {{{plugin}:geometry_reward: 1.0}}}}"
    overrides = [f"model.path={tiny_model_factory('qwen2_vl')}",
                 f"data.train_files={counting / 'train.parquet'},{geometry / 'train.parquet'}",
                 f"data.val_files={counting / 'val.parquet'},{geometry / 'val.parquet'}", "data.max_val_samples=100",
                 "reward.functions={}", routes, "data.batch_size=4", "rollout.n=2", "rollout.max_new_tokens=3",
                 f"trainer.output_dir={tmp_path / 'runs'}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
                 "trainer.total_steps=3", "trainer.save_freq=0", "trainer.val_freq=3"]
    assert main(["check", *overrides]) == 0
    assert "sources: counting" in capsys.readouterr().out
    result = run_experiment(load_config(None, overrides))
    rows = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/mean" in r]
    assert train and all(r["reward/errors_total"] == 0 for r in train)  # no row reached the other source's reward
    mixed = [r for r in train if "reward/source/counting" in r]
    assert mixed, "a shuffled batch of 4 from 2 x 9 prompts held both sources at least once in 3 steps"
    for r in mixed:
        assert r["reward/source/counting"] == 1.0 and r["reward/source/geometry"] == 0.25
        assert r["reward/source/counting/accuracy"] == 1.0 and "reward/source/geometry/accuracy" not in r
    val = [r for r in rows if any(k.startswith("val/") for k in r)][-1]
    assert val["val/counting/reward"] == 1.0 and val["val/geometry/reward"] == 0.25
    typo = [o.replace("geometry: {", "geometri: {") for o in overrides]
    assert main(["check", *typo]) == 2
    assert "reward.by_source names ['geometri'], which no prompt comes from" in capsys.readouterr().err


def test_a_sources_set_is_replaced_whole_by_a_config_over_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("reward:\n  functions: {math: 1.0}\n"
                                        "  by_source: {counting: {count: 1.0, format: 0.1}, geometry: {math: 1.0}}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nreward:\n  by_source: {counting: {count: 0.5}}\n")
    cfg = load_config(str(tmp_path / "run.yaml"), ["reward.by_source.geometry={math: 0.9, think_boxed: 0.1}"])
    assert cfg.reward.by_source == {"counting": {"count": 0.5}, "geometry": {"math": 0.9, "think_boxed": 0.1}}


def test_evaluation_accepts_routing_for_sources_it_does_not_use():
    # A training config routes two datasets; an eval set of one of them is still scored by its route.
    cfg = RewardConfig(functions={}, by_source={"counting": {"count": 1.0}, "geometry": {"math": 1.0}})
    check_sources(cfg, {"eval": ["counting"]}, require_used=False)
    with pytest.raises(ConfigError, match=r"reward.by_source names \['geometry'\]"):
        check_sources(cfg, {"train": ["counting"]})  # training still catches a misspelt or unused entry
    with pytest.raises(ConfigError, match=r"eval data source\(s\) \['other'\] have no reward"):
        check_sources(cfg, {"eval": ["counting", "other"]}, require_used=False)
