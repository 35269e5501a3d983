"""A task written in a public dataset's on-hub layout, so that a recipe for that dataset runs on it as written.

`rllava make-task geometry --layout geometry3k --out /data/geometry3k` gives a folder shaped like a
`huggingface-cli download` of hiyouga/geometry3k: `examples/recipes/geo3k_*.yaml` then train on it
offline, with only `model.path` to change. Each layout names the task it is written from; the task's
train / val / test splits become the dataset's train / validation / test files.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from rllava.registry import Registry
from rllava.tasks.base import make_task

LAYOUTS = Registry("layout", "public dataset layouts a task can be written in (`rllava make-task NAME --layout L`)")

SPLITS = {"train": "train", "val": "validation", "test": "test"}  # ours -> the hub's


def _read(task_dir: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(task_dir / f"{split}.parquet").to_pylist()


def _write(path: Path, columns: dict, features) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(path)


@LAYOUTS.register("geometry3k", task="geometry",
                  description="hiyouga/geometry3k: data/{train,validation,test}-*.parquet of images (embedded), problem, answer")
def geometry3k(task_dir: Path, out: Path) -> None:
    import datasets
    from PIL import Image

    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    for ours, theirs in SPLITS.items():
        rows = _read(task_dir, ours)
        columns = {"images": [[Image.open(task_dir / p).convert("RGB") for p in r["images"]] for r in rows],
                   "problem": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]}
        _write(out / "data" / f"{theirs}-00000-of-00001.parquet", columns, features)


@LAYOUTS.register("gsm8k", task="arithmetic",
                  description="openai/gsm8k: main/ and socratic/ {train,test}-*.parquet of question, answer ending '#### N'")
def gsm8k(task_dir: Path, out: Path) -> None:
    import datasets

    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    for config in ("main", "socratic"):  # the hub's two configs; its splits are train and test only
        for ours, theirs in (("train", "train"), ("test", "test")):
            rows = _read(task_dir, ours)
            columns = {"question": [r["prompt"] for r in rows],
                       "answer": [f"Work it out step by step.\n#### {int(r['answer']):,}" for r in rows]}
            _write(out / config / f"{theirs}-00000-of-00001.parquet", columns, features)


@LAYOUTS.register("scienceqa", task="choice",
                  description="derek-thomas/ScienceQA: data/{train,validation,test}-*.parquet of image (or none), question, "
                              "choices, answer (0-based index), hint and metadata")
def scienceqa(task_dir: Path, out: Path) -> None:
    import datasets
    from PIL import Image

    text = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "question": text, "choices": datasets.List(text),
                                  "answer": datasets.Value("int8"), "hint": text,
                                  **{k: text for k in ("task", "grade", "subject", "topic", "category", "skill",
                                                       "lecture", "solution")}})
    for ours, theirs in SPLITS.items():
        rows = _read(task_dir, ours)
        columns = {k: [] for k in features}
        for i, r in enumerate(rows):
            index = "ABCDEFGHIJ".index(r["answer"])
            right = r["choices"][index]
            text_only = i % 4 == 3  # as in ScienceQA, some questions have no image: their context is the hint
            columns["image"].append(None if text_only else Image.open(task_dir / r["images"][0]).convert("RGB"))
            columns["question"].append(r["prompt"].replace("<image>", ""))
            columns["choices"].append(list(r["choices"]))
            columns["answer"].append(index)
            columns["hint"].append(f"The {r['shape']} is {right}." if text_only else "")
            for k, v in (("task", "closed choice"), ("grade", "grade2"), ("subject", "natural science"),
                         ("topic", "colours"), ("category", "Shapes and colours"), ("skill", "Identify colours"),
                         ("lecture", ""), ("solution", f"The {r['shape']} is {right}.")):
                columns[k].append(v)
        _write(out / "data" / f"{theirs}-00000-of-00001.parquet", columns, features)


@LAYOUTS.register("clevr_cogen_a", task="counting",
                  description="leonardPKU/clevr_cogen_a_train (R1-V's CLEVR counting): one train split, "
                              "data/train-*.parquet of image, problem, solution ('<answer> 3 </answer>')")
def clevr_cogen_a(task_dir: Path, out: Path) -> None:
    import datasets
    from PIL import Image

    text = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "problem": text, "solution": text})
    rows = [r for ours in SPLITS for r in _read(task_dir, ours)]  # the hub has a train split only
    columns = {"image": [Image.open(task_dir / r["images"][0]).convert("RGB") for r in rows],
               "problem": [r["prompt"].replace("<image>", "") for r in rows],
               "solution": [f"<answer> {r['answer']} </answer>" for r in rows]}
    _write(out / "data" / "train-00000-of-00001.parquet", columns, features)


def make_task_in_layout(name: str, layout: str, out_dir: str | Path, n: int = 1000, seed: int = 0, **opts) -> Path:
    """`make_task(name, ...)` written in `layout` into `out_dir` (the task's own files are not kept)."""
    entry = LAYOUTS.entry(layout)
    if entry.meta["task"] != name:
        raise ValueError(f"layout {layout!r} is written from the {entry.meta['task']!r} task, not {name!r}")
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="rllava_task_") as tmp:
        entry.fn(make_task(name, tmp, n=n, seed=seed, **opts), out)
    # A download of the repo has its dataset card at the top (a config folder's data source is named after it).
    (out / "README.md").write_text(f"---\npretty_name: {layout} stand-in\n---\n# A synthetic stand-in in the layout of "
                                   f"{layout}\n\nWritten by `rllava make-task {name} --layout {layout}` (seed {seed}, "
                                   f"n {n}).\n")
    return out
