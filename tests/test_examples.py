"""Every example config trains for 3 steps on a tiny model (the configs users copy must work)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import load_config
from rllava.pipelines.run import needs_critic, run_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RL_CONFIGS = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "counting_sft.yaml")


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from rllava.tasks import make_task

    root = tmp_path_factory.mktemp("tasks")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = make_task(name, root / name, n=20, seed=0)
        return cache[name]

    return get


@pytest.mark.parametrize("name", RL_CONFIGS)
def test_example_trains_three_steps(name, tiny_model_factory, task_data, tmp_path):
    task = name.split("_")[0]
    data = task_data(task)
    family = "qwen2" if task in ("arithmetic", "calculate", "search") else "qwen2_vl"  # text-only tasks' examples are for text LLMs
    corpus = [f"env.corpus_path={data / 'corpus.jsonl'}"] if (data / "corpus.jsonl").exists() else []
    cfg = load_config(str(EXAMPLES / name), [*corpus,
        f"model.path={tiny_model_factory(family)}", f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}", "data.batch_size=2", "data.max_val_samples=2", "rollout.n=4",
        "rollout.max_new_tokens=8", "actor.mini_batch_size=4" if "mini_batch_size" in (EXAMPLES / name).read_text() else "actor.ppo_epochs=1",
        "trainer.total_steps=3", f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
        "trainer.val_before_train=false"])
    result = run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    actor_rows = rows[cfg.critic.pretrain_steps:]  # a critic's warm-up steps leave the actor alone
    assert actor_rows and all(r["actor/grad_norm"] == r["actor/grad_norm"] for r in actor_rows)  # finite (not NaN)
    if needs_critic(cfg):  # gae, vapo_gae
        assert all("critic/value_loss" in r for r in rows)
    if cfg.algorithm.kl_coef > 0:
        assert any(k in rows[-1] for k in ("kl/mean", "actor/kl_loss"))
    if cfg.algorithm.group_filter:
        assert all("filter/kept_groups" in r for r in rows)
    if cfg.algorithm.demonstrations == "mix":
        assert all(r["reward/demo_mean"] >= 0 and "actor/expert_prob_mean" in r for r in rows)
    if cfg.algorithm.demonstrations == "switch":
        assert all("demo/switched_fraction" in r for r in rows)
    if cfg.algorithm.demonstrations == "hint":
        assert all("demo/hint_ratio" in r for r in rows) and any("actor/demo_nll" in r for r in rows)
    if cfg.algorithm.demonstrations == "sft":
        assert all(r["actor/demo_nll"] > 0 and 0 < r["demo/sft_coef"] <= cfg.algorithm.sft_coef for r in rows)
    if cfg.algorithm.adv_estimator == "remax":
        assert all("reward/greedy_baseline" in r for r in rows)
