"""RL on text LLMs (no vision tower, no processor): GRPO and PPO with a critic on the text-only `arithmetic` task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import load_config
from rllava.pipelines.run import run_experiment
from rllava.tasks import make_task


@pytest.mark.parametrize("family, extra", [("qwen2", ()), ("qwen3", ("algorithm.adv_estimator=gae",))])
def test_rl_on_a_text_llm(tiny_model_factory, tmp_path, family, extra):
    data = make_task("arithmetic", tmp_path / "arith", n=30, seed=0)
    cfg = load_config(None, [
        f"model.path={tiny_model_factory(family)}", f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}", "data.template={{ prompt }} Answer with a number.",
        "data.batch_size=2", "rollout.n=4", "rollout.max_new_tokens=6", "actor.lr=1e-3", "algorithm.entropy_coef=0",
        "reward.functions={count: 1.0, number_format: 0.5}", f"trainer.output_dir={tmp_path}",
        "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "trainer.total_steps=2", *extra])
    result = run_experiment(cfg)
    run = Path(tmp_path) / "default"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]
    for r in rows[1:]:
        assert r["response/length_mean"] > 0 and r["actor/grad_norm"] > 0
        assert ("critic/value_loss" in r) == bool(extra)
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].count("What is") == 1 and "<|image_pad|>" not in sample["prompt"]
    assert Path(result["final_model"], "config.json").is_file()
