"""The real-model recipes (examples/recipes) run as written on a stand-in: a tiny model of the same family and a
local copy of their dataset's layout. Only the model, the data folder, sizes and what needs GPUs change."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rllava.config import load_config
from rllava.pipelines.preflight import preflight
from rllava.pipelines.run import run_experiment

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"


@pytest.fixture(scope="module")
def geometry3k_folder(tmp_path_factory) -> Path:
    """Our `geometry` task written as hiyouga/geometry3k is on the hub: `data/{train,test}-*.parquet` with columns
    `images` (embedded {bytes, path}), `problem` (opening with `<image>`) and `answer`."""
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq
    from PIL import Image

    from rllava.tasks import make_task

    root = tmp_path_factory.mktemp("geo3k")
    task = make_task("geometry", root / "task", n=16, seed=0)
    repo = root / "geometry3k"
    (repo / "data").mkdir(parents=True)
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    for ours, theirs in (("train", "train"), ("val", "test")):
        rows = pq.read_table(task / f"{ours}.parquet").to_pylist()
        columns = {"images": [[Image.open(task / p).convert("RGB") for p in r["images"]] for r in rows],
                   "problem": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]}
        datasets.Dataset.from_dict(columns, features=features).to_parquet(repo / "data" / f"{theirs}-00000-of-00001.parquet")
    return repo


# What a CPU test must change beyond the model, data and sizes: GPU-only engines.
ON_CPU = {"geo3k_qwen2_5_vl_7b_8gpu.yaml": ["actor.strategy=local", "rollout.engine=hf"]}


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_runs_on_a_stand_in(name, geometry3k_folder, tiny_model_factory, tmp_path):
    recipe = load_config(str(RECIPES / name))
    assert recipe.data.train_files.endswith("geometry3k@train") and recipe.data.val_files.endswith("geometry3k@test")
    cfg = load_config(str(RECIPES / name), [
        f"model.path={tiny_model_factory('qwen2_5_vl')}", f"data.train_files={geometry3k_folder}@train",
        f"data.val_files={geometry3k_folder}@test", "data.batch_size=2", "data.max_val_samples=2", "rollout.n=4",
        "rollout.max_new_tokens=8", "rollout.batch_size=0", "actor.mini_batch_size=4", "trainer.total_steps=2",
        "trainer.val_freq=0", "trainer.save_freq=0", f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false",
        "trainer.loggers=[jsonl]", *ON_CPU.get(name, [])])
    report = preflight(cfg)
    assert report["train"]["prompts"] == 12 and report["val"]["prompts"] == 2, report  # the folder's train and test splits
    assert report["reward_of_answers"] == pytest.approx(0.9)  # the true answers: math 1, no think block
    result = run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/grad_norm" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["actor/grad_norm"] == r["actor/grad_norm"] for r in train)  # finite
    assert {"reward/math", "reward/think_boxed"} <= set(train[0])  # both functions of the recipe scored
    assert any("val/accuracy" in r for r in rows)
