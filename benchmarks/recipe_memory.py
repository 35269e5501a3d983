"""A recipe's peak GPU memory and step time at its own sizes: a random model of its shape, a synthetic
stand-in of its dataset, under a memory cap.

    python benchmarks/recipe_memory.py examples/recipes/geo3k_qwen2_5_vl_3b_24gb.yaml   # a CUDA GPU, 24 GiB cap
    python benchmarks/recipe_memory.py RECIPE --size tiny --vocab 1024 --override data.batch_size=2 ...  # CPU smoke

The model is `build_tiny_model(--family, --size)` (default: Qwen2.5-VL-3B's shape at its 151,936-token
vocabulary, 4.07 B parameters), random weights, written once as a bf16 HF folder. The data is the
recipe's dataset as `rllava make-task --layout` writes it (`--layout`, default geometry3k: geometry
diagrams of `--image-px` pixels a side). Everything else is the recipe's own: prompts and samples a step,
`max_new_tokens` (a random model almost never stops early, so every response runs to the limit: the
worst case), micro-batch budget, offload, checkpointing. Validation and checkpoints are left out: the
question is whether training steps fit. `--override` (repeatable) changes a setting, for smoke runs.
Prints one JSON line: the cap, whether it ran out of memory, peak allocated and reserved GiB,
`peak_vs_cap` (peak reserved / the cap: the budget is this check's baseline, there is no second run),
and the median step / rollout / update seconds of the steps after the first.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

GIB = 2**30


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    import torch

    from rllava.models.tiny import build_tiny_model
    from rllava.tasks import LAYOUTS, make_task_in_layout, task_options

    work = Path(args.workdir)
    model_dir = work / f"{args.family}-{args.size}-{args.vocab}"
    if not (model_dir / "config.json").exists():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # billions of random inits: seconds on a GPU
            model, processor = build_tiny_model(args.family, args.size, seed=0, vocab=args.vocab)
        model.to(torch.bfloat16).save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        del model
    data_dir = work / f"{args.layout}-{args.image_px}"
    if not data_dir.exists():
        task = LAYOUTS.entry(args.layout).meta["task"]
        options = {"size": args.image_px} if "size" in task_options(task) else {}  # the image side, where it has one
        make_task_in_layout(task, args.layout, data_dir, n=args.rows, seed=0, **options)
    return model_dir, data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--workdir", default="/tmp/rllava_recipe_memory")
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--size", default="4b")
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--layout", default="geometry3k")
    ap.add_argument("--subfolder", default="", help="the config folder inside the layout, e.g. main for gsm8k")
    ap.add_argument("--image-px", type=int, default=448)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--cap-gib", type=float, default=24.0, help="0: the whole GPU")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()

    import torch

    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment
    from rllava.pipelines.trainer import Trainer

    model, data = prepare(args)
    data = data / args.subfolder if args.subfolder else data
    cuda = torch.cuda.is_available()
    total = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    if cuda and args.cap_gib > 0:
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
    Trainer.save = lambda self: None  # a 4 B checkpoint is tens of GB of disk, and not the question here
    out = Path(args.workdir) / "runs"
    cfg = load_config(args.recipe, [
        f"model.path={model}", f"data.train_files={data}@train", "data.val_files=", "trainer.val_before_train=false",
        f"trainer.total_steps={args.steps}", "trainer.val_freq=0", "trainer.loggers=[jsonl]", "trainer.progress_bar=false",
        f"trainer.output_dir={out}", "trainer.experiment_name=recipe", "trainer.resume=none",
        f"trainer.device={'cuda' if cuda else 'cpu'}", *args.override])
    result = {"recipe": args.recipe, "model": f"{args.family}-{args.size}", "cap_gib": args.cap_gib if cuda else None,
              "oom": False}
    try:
        run_experiment(cfg)
    except torch.OutOfMemoryError as e:
        result.update(oom=True, error=str(e).splitlines()[0][:300])
    if cuda:
        result.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                      peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
        cap = args.cap_gib or total / GIB
        result["peak_vs_cap"] = round(result["peak_reserved_gib"] / cap, 3)  # <= 1: the recipe fits the budget
    metrics = out / "recipe" / "metrics.jsonl"
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if "time/step" in r]
    for key in ("step", "rollout", "update"):
        vals = [r[f"time/{key}"] for r in rows[1:] if f"time/{key}" in r]  # after the first (warm-up)
        result[f"{key}_s"] = round(statistics.median(vals), 2) if vals else None
    result["steps_done"] = len(rows)
    result["response_length_mean"] = rows[-1].get("response/length_mean") if rows else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
