"""The real-model recipes (examples/recipes) run as written on a stand-in: a tiny model of the same family and a
local copy of their dataset's layout. Only the model, the data folder, sizes and what needs GPUs change."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rllava.config import load_config
from rllava.pipelines.preflight import preflight
from rllava.pipelines.run import run_experiment

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"


# The dataset each recipe reads (its `/data/NAME@split` folder) -> (the task and layout that stand in for it, the tiny
# model family, the reward of the rows' true answers, and the train and validation splits the test reads of its 16
# rows). geometry3k's answers get math's 0.9 and not think_boxed's 0.1, as they have no think block; the GSM8K rows'
# answers are right only once data.answer_template has pulled the number out of the worked solution; ScienceQA's get
# choice's 0.9 once data.answer_template has made the index a letter; CLEVR's, count's 0.9 once it has taken the
# number out of the <answer> tags. CLEVR has one split, of which the recipe holds out the last rows.
STAND_INS = {"geometry3k": ("geometry", "geometry3k", "", "qwen2_5_vl", 0.9, ("train", "test")),
             "gsm8k/main": ("arithmetic", "gsm8k", "main", "qwen2", 1.0, ("train", "test")),
             "ScienceQA": ("choice", "scienceqa", "", "qwen2_5_vl", 0.9, ("train", "test")),
             "clevr_cogen_a_train": ("counting", "clevr_cogen_a", "", "qwen2_5_vl", 0.9, ("train[:-4]", "train[-2:]"))}
# What data.answer_template makes of each row's answer: GSM8K's number ("1,234" as 1234), ScienceQA's letter, CLEVR's count.
RENDERED_ANSWER = {"gsm8k/main": r"-?\d+", "ScienceQA": r"[A-J]", "clevr_cogen_a_train": r"\d+"}
DATA_SPEC = re.compile(r"/data/(?P<name>[\w./-]+)@(?P<split>\S+)")


@pytest.fixture(scope="module")
def stand_in_data(tmp_path_factory):
    """`get(dataset) -> folder`: a task written in that dataset's layout (`rllava make-task --layout`)."""
    pytest.importorskip("datasets")
    from rllava.tasks import make_task_in_layout

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            task, layout, sub = STAND_INS[name][:3]
            root = make_task_in_layout(task, layout, tmp_path_factory.mktemp(layout) / layout, n=16, seed=0)
            cache[name] = root / sub if sub else root
        return cache[name]

    return get


# What a CPU test must change beyond the model, data and sizes: GPU-only engines.
ON_CPU = {"geo3k_qwen2_5_vl_7b_8gpu.yaml": ["actor.strategy=local", "rollout.engine=hf"]}


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_runs_on_a_stand_in(name, stand_in_data, tiny_model_factory, tmp_path):
    recipe = load_config(str(RECIPES / name))
    train, val = DATA_SPEC.fullmatch(recipe.data.train_files), DATA_SPEC.fullmatch(recipe.data.val_files)
    assert train and val and train["name"] == val["name"] and train["name"] in STAND_INS, recipe.data
    dataset = train["name"]
    folder, family, (train_split, val_split) = stand_in_data(dataset), STAND_INS[dataset][3], STAND_INS[dataset][5]
    # The same splits as the recipe's, or the same kind of slices of the one split.
    assert (train["split"], val["split"]) == (train_split, val_split) or (
        train["split"].startswith("train[:-") and val["split"].startswith("train[-")), (train, val)
    cfg = load_config(str(RECIPES / name), [
        f"model.path={tiny_model_factory(family)}", f"data.train_files={folder}@{train_split}",
        f"data.val_files={folder}@{val_split}", "data.batch_size=2", "data.max_val_samples=2", "rollout.n=4",
        "rollout.max_new_tokens=8", "rollout.batch_size=0", "actor.mini_batch_size=4", "trainer.total_steps=2",
        "trainer.val_freq=0", "trainer.save_freq=0", f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false",
        "trainer.loggers=[jsonl]", *ON_CPU.get(name, [])])
    report = preflight(cfg)
    assert report["train"]["prompts"] == 12 and report["val"]["prompts"] == 2, report  # the train and test splits
    assert report["reward_of_answers"] == pytest.approx(STAND_INS[dataset][4])
    if cfg.data.answer_template:  # the rewards get what the template renders from the row
        from rllava.data.dataset import RLDataset
        from rllava.models.load import load_processor
        from rllava.models.tiny_families import FAMILIES

        ds = RLDataset(cfg.data.train_files, cfg.data, load_processor(cfg.model.path, FAMILIES[family].vision))
        assert all(re.fullmatch(RENDERED_ANSWER[dataset], ds.meta(i)["answer"]) for i in range(len(ds)))
    result = run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/grad_norm" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["actor/grad_norm"] == r["actor/grad_norm"] for r in train)  # finite
    assert {f"reward/{k}" for k in recipe.reward.functions} <= set(train[0])  # every function of the recipe scored
    assert any("val/accuracy" in r for r in rows)
