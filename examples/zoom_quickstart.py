"""Agentic quickstart: a tiny Qwen2-VL learns to zoom before it answers, on CPU, offline.

The task is an easy `zoom` variant: one letter (O or X by default) on a small label in a
448 px image. The prompt image reaches the model at 112 px, where the letter is 3 pixels tall:
it is legible only in a crop from the `zoom` tool. Steps: a short SFT on 16 tool-use
demonstrations (zoom on the label, then answer; `trainer.pipeline=agentic_sft`), which teaches
the call format but not yet to read the crop; GRPO with multi-turn episodes
(`trainer.pipeline=agentic`), which learns to read it from the answer reward; greedy multi-turn
evaluation of both models on the held-out test split. The last line printed is a JSON object
with the base (SFT) and RL accuracy and tool-call rate.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rllava.config import load_config
from rllava.models.tiny import make_tiny_model
from rllava.pipelines.evaluate import evaluate_model
from rllava.pipelines.run import run_experiment
from rllava.tasks import make_task

EXAMPLES = Path(__file__).resolve().parent


def evaluate_agent(model_path: str, data_file: str, overrides: list[str]) -> dict[str, float]:
    """Greedy multi-turn episodes of a model folder on a dataset, with zoom_agent.yaml's settings (`rllava eval
    --config`): accuracy and tool-call rate."""
    m = evaluate_model(model_path, data_file, None, [*overrides, "data.max_val_samples=null"],
                       device="cpu", print_table=False, config=str(EXAMPLES / "zoom_agent.yaml"))
    return {"accuracy": m["eval/accuracy"], "tool_call_rate": m["eval/agent/tool_call_rate"],
            "turns": m["eval/agent/turns"], "n": m["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/zoom-quickstart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alphabet", default="OX", help="the letters a label may hold")
    ap.add_argument("--font-size", type=int, default=16, help="the letter's font size in pixels")
    ap.add_argument("--grid", type=int, default=1, help="the label sits in one of grid x grid places")
    ap.add_argument("--n", type=int, default=1000, help="task samples (80/10/10 train/val/test)")
    ap.add_argument("--demos", type=int, default=16, help="tool-use demonstrations for the SFT warm start")
    ap.add_argument("--sft-steps", type=int, default=25,
                    help="few on purpose: the warm start learns the call format, not yet to read the crop")
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--rl-steps", type=int, default=30)
    ap.add_argument("--rl-lr", type=float, default=5e-4)
    ap.add_argument("--rl-temperature", type=float, default=0.7,
                    help="below 1 so that most sampled zoom calls of the short warm start are well-formed")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()

    task = dict(length=1, alphabet=args.alphabet, font_size=args.font_size, min_size=448, max_size=448, grid=args.grid,
                clutter=0)
    model = make_tiny_model("qwen2_vl", out / "tiny-qwen2vl", seed=args.seed)
    data = make_task("zoom", out / "zoom", n=args.n, seed=args.seed, **task)
    # The demonstrations are a separate draw: RL then learns from the reward alone on the train split.
    demos = make_task("zoom", out / "zoom-demos", n=args.demos, seed=args.seed + 10_000, **task)
    demo_files = ",".join(str(demos / f"{split}.parquet") for split in ("train", "val", "test"))  # all n of them
    # 112 x 112 prompt images (16 visual tokens): the letter shrinks to 3 px, the label to a dot.
    common = [f"data.val_files={data / 'val.parquet'}", "data.max_pixels=12544", "data.max_val_samples=32",
              f"trainer.output_dir={out}", f"trainer.seed={args.seed}", "trainer.loggers=[jsonl,tensorboard]",
              "trainer.resume=none"]

    print(f"\n== 1/3 SFT on {args.demos} tool-use demonstrations ({args.sft_steps} steps)", flush=True)
    sft = run_experiment(load_config(str(EXAMPLES / "zoom_sft.yaml"), common + [
        f"data.train_files={demo_files}", f"data.batch_size={args.demos}", f"model.path={model}",
        f"actor.lr={args.sft_lr}", f"trainer.total_steps={args.sft_steps}"]))

    print(f"\n== 2/3 agentic GRPO ({args.rl_steps} steps)", flush=True)
    rl = run_experiment(load_config(str(EXAMPLES / "zoom_agent.yaml"), common + [
        f"data.train_files={data / 'train.parquet'}", f"model.path={sft['final_model']}", "data.batch_size=16",
        "rollout.n=8", "actor.mini_batch_size=32", f"actor.lr={args.rl_lr}", f"rollout.temperature={args.rl_temperature}",
        f"trainer.total_steps={args.rl_steps}"]))

    print("\n== 3/3 held-out accuracy (greedy multi-turn episodes, test split)", flush=True)
    test = str(data / "test.parquet")
    base = evaluate_agent(sft["final_model"], test, ["data.max_pixels=12544"])
    final = evaluate_agent(rl["final_model"], test, ["data.max_pixels=12544"])
    print(f"\n{'model':<12} {'test accuracy':>14} {'tool-call rate':>15}")
    for name, m in (("SFT base", base), ("SFT + GRPO", final)):
        print(f"{name:<12} {m['accuracy']:>14.3f} {m['tool_call_rate']:>15.3f}")
    print(f"curves: {Path(rl['run_dir']) / 'curves.png'}  ({time.time() - t0:.0f} s)")
    print(json.dumps({"base_accuracy": base["accuracy"], "rl_accuracy": final["accuracy"],
                      "base_tool_call_rate": base["tool_call_rate"], "rl_tool_call_rate": final["tool_call_rate"],
                      "n_test": base["n"], "seed": args.seed, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
