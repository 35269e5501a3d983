"""The task registry and `make_task`: run a generator n times and write a standard dataset folder.

A generator is `fn(rng: random.Random, **options) -> Sample`. Its registry meta records the
default prompt template and reward weights (and, for agentic tasks, environment settings and stop strings). The
folder holds train/val/test.parquet (about 80/10/10) with columns prompt (text with `<image>` /
`<video>` markers), answer (string), images (relative paths), videos (one list of frame paths, for
tasks with a video) and the task's own fields, the PNGs in images/ (and frames/), corpus.jsonl
for tasks whose samples bring documents (a search tool's corpus), and task.yaml.
"""
from __future__ import annotations

import inspect
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from rllava.registry import Registry

TASKS = Registry("task", "offline synthetic task generators (`rllava make-task NAME --out DIR`)")


@dataclass
class Sample:
    """One generated example: its image(s), question (with a marker per image and video), answer and extra fields."""

    image: Image.Image | list[Image.Image] | None  # one image, several (in marker order), or none
    prompt: str
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)
    video: list[Image.Image] = field(default_factory=list)  # the frames of one video, if the task has one
    documents: list[dict[str, str]] = field(default_factory=list)  # {id, title, text} for the task's search corpus

    @property
    def images(self) -> list[Image.Image]:
        return [] if self.image is None else list(self.image) if isinstance(self.image, list) else [self.image]


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes: about 80/10/10, with at least one val and test example once n >= 3."""
    if n < 3:
        return n, 0, 0
    held = max(1, round(n * 0.1))
    return n - 2 * held, held, held


def task_options(name: str) -> dict[str, Any]:
    """The keyword options a task generator accepts, with their defaults."""
    sig = inspect.signature(TASKS.get(name))
    return {p.name: p.default for p in list(sig.parameters.values())[1:] if p.default is not inspect.Parameter.empty}


def _write_split(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


MAX_REDRAWS = 100  # per sample, for unique corpus document ids


def _new_ids(documents: list[dict[str, str]], seen: set[str]) -> bool:
    """True when the documents' ids differ from each other and from every id in `seen`."""
    ids = [d["id"] for d in documents]
    return len(set(ids)) == len(ids) and not seen.intersection(ids)


def make_task(name: str, out_dir: str | Path, n: int = 1000, seed: int = 0, **opts: Any) -> Path:
    """Generate `n` samples of task `name` into `out_dir`; the same seed gives the same files."""
    entry = TASKS.entry(name)  # unknown name: error naming the closest task
    known = task_options(name)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}; options: {known}")
    if n < 1:
        raise ValueError(f"make_task: n must be >= 1, got {n}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file: give a folder to write the task into")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, documents = [], []
    doc_ids: set[str] = set()
    for i in range(n):
        # One RNG per sample: sample i is the same whatever n is.
        sample: Sample = entry.fn(random.Random(f"{name}:{seed}:{i}"), **opts)
        # A corpus id names one passage: a sample whose document ids repeat an earlier one's (a made-up name
        # drawn twice) would contradict it, or ask its question again with another answer. Redraw it.
        redraw = 0
        while not _new_ids(sample.documents, doc_ids):
            redraw += 1
            if redraw > MAX_REDRAWS:
                raise ValueError(f"task {name!r}: sample {i} repeats a corpus document id after {MAX_REDRAWS} "
                                 f"redraws: n={n} is more than the task has distinct documents for")
            sample = entry.fn(random.Random(f"{name}:{seed}:{i}:{redraw}"), **opts)
        doc_ids.update(d["id"] for d in sample.documents)
        images = sample.images
        rels = [f"images/{i:06d}.png"] if len(images) == 1 else [f"images/{i:06d}_{j}.png" for j in range(len(images))]
        for img, rel in zip(images, rels):
            img.save(out / rel, format="PNG")
        row = {"prompt": sample.prompt, "answer": sample.answer, "images": rels}
        if sample.video:
            (out / "frames").mkdir(exist_ok=True)
            frames = [f"frames/{i:06d}_{k}.png" for k in range(len(sample.video))]
            for frame, rel in zip(sample.video, frames):
                frame.save(out / rel, format="PNG")
            row["videos"] = [frames]
        rows.append({**row, **sample.fields, "id": i})
        documents += sample.documents
    schema = pa.Table.from_pylist(rows).schema
    n_train, n_val, n_test = split_sizes(n)
    splits = {"train": rows[:n_train], "val": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}
    for split, split_rows in splits.items():
        _write_split(out / f"{split}.parquet", split_rows, schema)
    info = {
        "task": name, "description": entry.description, "n": n, "seed": seed, "options": {**known, **opts},
        "splits": {k: len(v) for k, v in splits.items()},
        "data": {"train_files": str(out / "train.parquet"), "val_files": str(out / "val.parquet"),
                 "template": entry.meta.get("template", "{{ prompt }}")},
        "reward": {"functions": dict(entry.meta.get("reward", {}))},
    }
    for section in ("env", "rollout"):  # an agentic task's environment and stop strings
        if entry.meta.get(section):
            info[section] = dict(entry.meta[section])
    if documents:  # every split's documents: a question's passage must be findable whichever split holds it
        (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
        info.setdefault("env", {})["corpus_path"] = str(out / "corpus.jsonl")
    (out / "task.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return out
