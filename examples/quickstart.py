"""The quickstart (`make demo`): offline tiny Qwen2-VL, SFT warm start, GRPO, held-out accuracy.

Everything runs on CPU with nothing downloaded: the model is built from a config with random
weights and an offline tokenizer, the data is the synthetic `counting` task. The last line
printed is a JSON object with `base_accuracy` (the SFT model) and `rl_accuracy`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rllava.config import load_config
from rllava.models.tiny import make_tiny_model
from rllava.pipelines.evaluate import evaluate_model
from rllava.pipelines.run import run_experiment
from rllava.tasks import make_task

EXAMPLES = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="outputs/quickstart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-examples", type=int, default=32, help="labelled examples for the SFT warm start")
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--sft-lr", type=float, default=2e-3,
                    help="high on purpose: the short warm start learns the answer format (a digit, then EOS), "
                         "not yet the counting")
    ap.add_argument("--rl-steps", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000, help="task samples (80/10/10 train/val/test)")
    ap.add_argument("--difficulty", default="trivial", help="counting difficulty: trivial | easy | medium | hard")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads. One makes a run repeat exactly; with two, float sums change order from run "
                         "to run and this short, high-lr GRPO can take another path (docs/benchmarks.md)")
    ap.add_argument("--rl-override", action="append", default=[], metavar="KEY=VALUE",
                    help="a GRPO config override, e.g. actor.lr=5e-4 (repeatable; benchmarks/quickstart_seeds.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.time()

    model = make_tiny_model("qwen2_vl", out / "tiny-qwen2vl", seed=args.seed)
    data = make_task("counting", out / "counting", n=args.n, seed=args.seed, difficulty=args.difficulty)
    # A few labelled demonstrations (a separate draw) for the warm start; RL then learns from the
    # reward on the large unlabelled-by-hand train split. This is the usual SFT-then-RL setting.
    demos = make_task("counting", out / "counting-demos", n=max(2, args.sft_examples * 5 // 4),
                      seed=args.seed + 10_000, difficulty=args.difficulty)
    common = [f"data.val_files={data / 'val.parquet'}", f"trainer.output_dir={out}", f"trainer.seed={args.seed}",
              "trainer.loggers=[jsonl,tensorboard]", "trainer.resume=none"]

    print(f"\n== 1/3 SFT warm start ({args.sft_steps} steps on {args.sft_examples} examples)", flush=True)
    sft = run_experiment(load_config(str(EXAMPLES / "counting_sft.yaml"), common + [f"actor.lr={args.sft_lr}",
        f"data.train_files={demos / 'train.parquet'}", f"data.batch_size={args.sft_examples}",
        f"model.path={model}", f"trainer.total_steps={args.sft_steps}"]))

    print(f"\n== 2/3 GRPO ({args.rl_steps} steps)", flush=True)
    rl = run_experiment(load_config(str(EXAMPLES / "counting_grpo.yaml"), common + [
        f"data.train_files={data / 'train.parquet'}", f"model.path={sft['final_model']}",
        f"trainer.total_steps={args.rl_steps}", *args.rl_override]))

    print("\n== 3/3 held-out accuracy (greedy, test split)", flush=True)
    test = str(data / "test.parquet")
    over = ["data.template={{ prompt }} Answer with a number.", "rollout.max_new_tokens=4"]
    base = evaluate_model(sft["final_model"], test, {"count": 1.0}, over, device="cpu", print_table=False)
    final = evaluate_model(rl["final_model"], test, {"count": 1.0}, over, device="cpu", print_table=False)
    print(f"\n{'model':<12} {'test accuracy':>14}")
    print(f"{'SFT base':<12} {base['eval/accuracy']:>14.3f}")
    print(f"{'SFT + GRPO':<12} {final['eval/accuracy']:>14.3f}")
    print(f"curves: {Path(rl['run_dir']) / 'curves.png'}  ({time.time() - t0:.0f} s)")
    print(json.dumps({"base_accuracy": base["eval/accuracy"], "rl_accuracy": final["eval/accuracy"],
                      "n_test": base["n"], "seed": args.seed, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
