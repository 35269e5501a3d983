"""SFT-RL hybrids from a cold start: plain GRPO against LUFFY, HPT, CHORD and SRFT where rollouts never succeed.

    python benchmarks/hybrids_cold_start.py                    # seeds 0 and 1, 100 steps each
    python benchmarks/hybrids_cold_start.py --seeds 0 --steps 60

A random-weight tiny Qwen2-VL learns the counting task under a strict reward: 1 only for a response
that is exactly `<answer>N</answer>` with the right N (examples/plugins/tagged_count.py). The random
model essentially never writes that, so every GRPO group has all-zero rewards and no gradient; the
hybrids also see each row's demonstration `<answer>N</answer>`. Each run is `rllava train
examples/counting_<name>.yaml` with the same data, lr, batch and steps (GRPO with n=8; the `mix` and
`sft` hybrids with 7 rollouts + 1 demonstration), in its own process. Prints one JSON line: per method
and seed the final held-out accuracy (greedy) and the mean training reward of the rollouts, and each
method's mean accuracy minus GRPO's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("grpo", "luffy", "hpt", "chord", "srft")


def run(method: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    extra = ["actor.mini_batch_size=0", "rollout.n=8"] if method == "grpo" else []
    cmd = [sys.executable, "-m", "rllava", "train", str(ROOT / "examples" / f"counting_{method}.yaml"),
           f"model.path={work / 'model'}", f"data.train_files={work / 'data' / 'train.parquet'}",
           f"data.val_files={work / 'data' / 'val.parquet'}", "data.batch_size=8", "data.max_val_samples=100",
           f"actor.lr={args.lr}", f"trainer.total_steps={args.steps}", f"trainer.seed={seed}", *extra,
           f"plugins=[{ROOT / 'examples' / 'plugins' / 'tagged_count.py'}]", "reward.functions={tagged_count: 1.0}",
           "data.template='{{ prompt }} Answer as <answer>N</answer>.'",
           "data.response_template='<answer>{{ answer }}</answer>'", "rollout.max_new_tokens=12",
           f"trainer.output_dir={work / 'runs'}", f"trainer.experiment_name={method}_{seed}", "trainer.progress_bar=false",
           "trainer.loggers=[jsonl]", "trainer.save_freq=0", "trainer.keep_last=1", "trainer.resume=none"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(ln) for ln in (work / "runs" / f"{method}_{seed}" / "metrics.jsonl").read_text().splitlines()]
    train = [r["reward/mean"] for r in rows if "reward/mean" in r]
    return {"accuracy": round(rows[-1]["val/accuracy"], 3), "train_reward": round(statistics.mean(train), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workdir", default=None, help="default: a fresh temp folder")
    args = ap.parse_args()
    from rllava.models.tiny import make_tiny_model
    from rllava.tasks import make_task

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        if not (work / "model" / "config.json").exists():
            make_tiny_model("qwen2_vl", work / "model")
        if not (work / "data" / "train.parquet").exists():
            make_task("counting", work / "data", n=600)
        seeds = [int(s) for s in args.seeds.split(",")]
        out: dict = {"steps": args.steps, "seeds": seeds}
        for method in args.methods.split(","):
            out[method] = {str(s): run(method, s, args, work) for s in seeds}
            print(method, out[method], file=sys.stderr, flush=True)
    mean = {m: statistics.mean(r["accuracy"] for r in out[m].values()) for m in args.methods.split(",")}
    if "grpo" in mean:
        out["accuracy_minus_grpo"] = {m: round(a - mean["grpo"], 3) for m, a in mean.items() if m != "grpo"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
