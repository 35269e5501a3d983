"""What a config switch costs per training step: GRPO runs with and without it, steps interleaved.

    python benchmarks/switch_cost.py "algorithm.top_entropy_frac=0.2"
    python benchmarks/switch_cost.py "reward.workers=2" --steps 8 --threads 2
    python benchmarks/switch_cost.py "algorithm.top_entropy_frac=0.2" --base actor.mini_batch_size=32

Both runs train the tiny Qwen2-VL "small" (31 M) on the counting task (8 prompts x 8 samples of up
to 32 tokens a step, one optimizer step a step, CPU, fp32) with the same seed. Each run is a
subprocess that trains one step at a time on a pipe handshake, so the two take turns and share any
background load. `--base` overrides (repeatable) apply to both runs. Prints one JSON line: the median `time/step` of each after `--warmup` steps and
`step_time_ratio` = with / without, and the same for `time/update` (`update_time_ratio`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    """Train, blocking before each step until the parent writes a line; report each step's time/step."""
    import torch

    torch.set_num_threads(args.threads)
    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment
    from rllava.pipelines.trainer import Trainer

    original = Trainer.train_one_step

    def gated(self, logger, validate):
        sys.stdin.readline()
        original(self, logger, validate)
        rows = (self.ctx.run_dir / "metrics.jsonl").read_text().splitlines()
        last = json.loads(rows[-1])
        print(json.dumps({"step_s": last["time/step"], "update_s": last.get("time/update", float("nan"))}), flush=True)

    Trainer.train_one_step = gated
    work = Path(args.workdir)
    over = [f"model.path={work / 'model'}", f"data.train_files={work / 'counting' / 'train.parquet'}", "data.val_files=",
            "data.template={{ prompt }} Answer with a number.", "reward.functions={count: 1.0}", "data.batch_size=8",
            "rollout.n=8", "rollout.max_new_tokens=32", "trainer.val_before_train=false", "trainer.save_freq=0",
            f"trainer.total_steps={args.steps}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
            f"trainer.output_dir={work / 'runs'}", f"trainer.experiment_name={args.child}", "trainer.resume=none",
            *args.base, *([args.switch] if args.child == "with" else [])]
    run_experiment(load_config(None, over))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("switch", help="one dotted override, e.g. algorithm.top_entropy_frac=0.2")
    ap.add_argument("--base", action="append", default=[], help="an override for both runs (repeatable)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir")
    ap.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from rllava.models.tiny import make_tiny_model
    from rllava.tasks import make_task

    work = Path(args.workdir or tempfile.mkdtemp(prefix="switch_cost_"))
    if not (work / "model").exists():
        make_tiny_model("qwen2_vl", work / "model", size="small")
        make_task("counting", work / "counting", n=200, seed=0)
    procs = {side: subprocess.Popen([sys.executable, __file__, args.switch, "--child", side, "--workdir", str(work),
                                     "--steps", str(args.steps), "--threads", str(args.threads),
                                     *[f"--base={b}" for b in args.base]],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for side in ("without", "with")}
    times: dict[str, list[float]] = {side: [] for side in procs}
    updates: dict[str, list[float]] = {side: [] for side in procs}
    for _ in range(args.steps):
        for side, proc in procs.items():  # one step each, in turn
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            while line and not line.startswith("{"):
                line = proc.stdout.readline()
            times[side].append(json.loads(line)["step_s"])
            updates[side].append(json.loads(line)["update_s"])
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    med = {side: statistics.median(t[args.warmup:]) for side, t in times.items()}
    upd = {side: statistics.median(t[args.warmup:]) for side, t in updates.items()}
    print(json.dumps({"switch": args.switch, "base": args.base, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                      "without_step_s": round(med["without"], 3), "with_step_s": round(med["with"], 3),
                      "step_time_ratio": round(med["with"] / med["without"], 3),
                      "without_update_s": round(upd["without"], 3), "with_update_s": round(upd["with"], 3),
                      "update_time_ratio": round(upd["with"] / upd["without"], 3)}))


if __name__ == "__main__":
    main()
