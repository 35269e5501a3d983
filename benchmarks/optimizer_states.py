"""8-bit AdamW states (`actor.optimizer=adamw_8bit`) against fp32 AdamW on the CPU: state memory and time.

    python benchmarks/optimizer_states.py                  # tiny Qwen2 text model, "small" (~30 M params)
    python benchmarks/optimizer_states.py --threads 2 --steps 8

Each optimizer runs in its own subprocess: the local engine trains the same model on the same random
token batches (LM loss, one optimizer step per batch). Prints one JSON line: per optimizer, the optimizer
state in bytes a parameter, the median seconds of one optimizer step (clip + step) and of one whole
training step, and the process's peak RSS; then the ratios 8-bit / fp32. On the CPU this is also the
cost under `actor.optimizer_offload`, where the optimizer steps the CPU masters.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPTIMIZERS = ("adamw", "adamw_8bit")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))


def child(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    engine = LocalTrainEngine(model, lr=1e-4, optimizer=args.child)
    gen = torch.Generator().manual_seed(0)
    opt_s, step_s = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        ids = torch.randint(5, model.config.vocab_size, (args.batch, args.seq), generator=gen)
        with engine.compute(train=True):
            model(input_ids=ids, labels=ids).loss.backward()
        t1 = time.perf_counter()
        engine.step()
        t2 = time.perf_counter()
        opt_s.append(t2 - t1)
        step_s.append(t2 - t0)
    n_params = sum(p.numel() for p in engine.params)
    state = sum(v.numel() * v.element_size() for s in engine.optimizer.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    return {"params_m": round(n_params / 1e6, 2), "state_bytes_per_param": round(state / n_params, 3),
            "optimizer_step_s": round(statistics.median(opt_s[args.warmup:]), 4),
            "train_step_s": round(statistics.median(step_s[args.warmup:]), 4), "peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", help="tiny model size (rllava.models.tiny)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", choices=OPTIMIZERS)
    ap.add_argument("--model")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    from rllava.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model("qwen2", Path(tmp) / "model", size=args.size)
        out: dict = {"threads": args.threads, "steps": args.steps}
        for name in OPTIMIZERS:
            cmd = [sys.executable, __file__, "--child", name, "--model", str(model), "--threads", str(args.threads),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--seq", str(args.seq)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[name] = json.loads(next(ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")))
    a, q = out["adamw"], out["adamw_8bit"]
    out.update(state_ratio=round(q["state_bytes_per_param"] / a["state_bytes_per_param"], 3),
               optimizer_step_time_ratio=round(q["optimizer_step_s"] / a["optimizer_step_s"], 2),
               train_step_time_ratio=round(q["train_step_s"] / a["train_step_s"], 3),
               peak_rss_ratio=round(q["peak_rss_mb"] / a["peak_rss_mb"], 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
