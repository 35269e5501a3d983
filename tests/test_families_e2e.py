"""Every model family through a whole run: data, rollout, reward, update, checkpoint, and a reload of the
saved folder with plain transformers (VLMs on `counting`, text LLMs on `arithmetic`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rllava.config import load_config
from rllava.models.tiny_families import FAMILIES
from rllava.pipelines.run import run_experiment


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from rllava.tasks import make_task

    root = tmp_path_factory.mktemp("tasks")
    return {name: make_task(name, root / name, n=12, seed=0) for name in ("counting", "arithmetic")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_grpo_steps_and_a_reloadable_checkpoint(family, tiny_model_factory, task_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from rllava.models import tinyllava  # noqa: F401  (registers "tinyllava" with the Auto classes)

    vision = FAMILIES[family].vision
    data = task_data["counting" if vision else "arithmetic"]
    model = tiny_model_factory(family)
    cfg = load_config(None, [
        f"model.path={model}", f"data.train_files={data / 'train.parquet'}", "data.val_files=",
        "data.template={{ prompt }} Answer with a number.", "data.batch_size=2", "rollout.n=2",
        "rollout.max_new_tokens=4", "actor.lr=1e-3", "algorithm.entropy_coef=0.01", "reward.functions={count: 1.0}",
        f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
        "trainer.total_steps=2"])
    result = run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/grad_norm"] > 0 for r in rows)
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    before, after = auto.from_pretrained(model).state_dict(), auto.from_pretrained(result["final_model"]).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the saved folder holds the update
