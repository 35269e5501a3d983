"""Full-parameter GRPO of a 4 B-class VLM on one GPU capped at 24 GiB: optimizer offload against the default.

    python benchmarks/memory_24gb.py --workdir /tmp/m24        # needs a CUDA GPU with more than the cap

The model has the shape of Qwen2.5-VL-3B at its real 151,936-token vocabulary with an untied LM head
(4.07 B parameters), random weights, written once as a bf16 HF folder; the counting data's images are
upscaled to 448 x 448 (256 image tokens a prompt). Each variant runs `run_experiment` (what `rllava
train` calls) in its own subprocess under `torch.cuda.set_per_process_memory_fraction`:

- `offload`: `model.dtype=bfloat16 actor.optimizer_offload=true` under the cap: bf16 weights on the GPU;
  fp32 masters, gradients and AdamW states in host memory.
- `default`: fp32 master weights, gradients and AdamW states on the GPU with bf16 autocast (rllava's
  default), with `--baseline-cap-gib` (0 = the whole GPU), to measure what it needs.
- `offload_8bit`, `default_8bit` (`--variants`): the same with `actor.optimizer=adamw_8bit`, 8-bit AdamW
  states (bitsandbytes): 2 bytes a parameter instead of 8, in host memory or on the GPU.

Both use gradient checkpointing, KL off (no reference model), `data.batch_size` prompts x `rollout.n`
samples x `--new-tokens` tokens (a random model almost never stops early), lr 1e-6, one update a step.
The end-of-run checkpoint is skipped: for 4 B parameters it is 56 GB of disk (the bf16 HF folder plus
the fp32 masters and AdamW states). Prints one JSON line: each variant's peak GPU memory (allocated and
reserved, GiB), whether it ran out of memory, its median step / rollout / update seconds (steps after the
first), and `memory_ratio` (offload peak allocated / default peak allocated; `memory_ratios` for every
variant).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

GIB = 2**30
OFFLOAD = ["model.dtype=bfloat16", "actor.optimizer_offload=true"]
VARIANTS = {"offload": OFFLOAD, "default": ["model.dtype=bfloat16"],  # the `_8bit` ones: 8-bit AdamW states
            "offload_8bit": [*OFFLOAD, "actor.optimizer=adamw_8bit"],
            "default_8bit": ["model.dtype=bfloat16", "actor.optimizer=adamw_8bit"]}


def prepare(workdir: Path, size: str, vocab: int) -> tuple[Path, Path]:
    import torch

    from rllava.models.tiny import build_tiny_model
    from rllava.tasks import make_task

    model_dir, data_dir = workdir / f"qwen2_5_vl-{size}", workdir / "counting"
    if not (model_dir / "config.json").exists():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 4 B random inits: seconds on a GPU
            model, processor = build_tiny_model("qwen2_5_vl", size, seed=0, vocab=vocab)
        model.to(torch.bfloat16).save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        del model
    if not (data_dir / "train.parquet").exists():
        make_task("counting", data_dir, n=64, seed=0)
    return model_dir, data_dir


def count_params(size: str, vocab: int) -> int:
    import torch
    from transformers import AutoModelForImageTextToText

    from rllava.models.tiny import tiny_config

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForImageTextToText.from_config(tiny_config("qwen2_5_vl", size, vocab)[0]).parameters())


def time_calls(methods: dict, cuda: bool) -> dict[str, list[float]]:
    """Wrap cls.name for each pair with a cumulative [seconds, calls] timer (synchronising the GPU around it)."""
    import time

    import torch

    timers = {}
    for cls, name in methods.items():
        timers[name] = acc = [0.0, 0]
        original = getattr(cls, name)

        def timed(*a, _original=original, _acc=acc, **kw):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = _original(*a, **kw)
            if cuda:
                torch.cuda.synchronize()
            _acc[0] += time.perf_counter() - t0
            _acc[1] += 1
            return out

        setattr(cls, name, timed)
    return timers


def child(args: argparse.Namespace) -> None:
    import torch

    from rllava.config import load_config
    from rllava.engines.local import LocalTrainEngine
    from rllava.engines.offload import CPUMasterWeights
    from rllava.pipelines.run import run_experiment
    from rllava.pipelines.trainer import Trainer

    cuda = torch.cuda.is_available()  # without one: a smoke test of this script (--size tiny), no memory figures
    total = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    if cuda and args.cap_gib > 0:
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
    Trainer.save = lambda self: None  # see the docstring: no 56 GB checkpoint
    timers = time_calls({LocalTrainEngine: "step", CPUMasterWeights: "grad_to_master"}, cuda)
    side = VARIANTS[args.variant]
    out = Path(args.workdir) / "runs"
    overrides = [
        f"model.path={args.model}", f"data.train_files={Path(args.data) / 'train.parquet'}", "data.val_files=",
        "data.template='{{ prompt }} Answer with a number.'", f"data.batch_size={args.batch}",
        f"data.min_pixels={448 * 448}", f"data.max_pixels={448 * 448}", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.new_tokens}", "rollout.temperature=1.0", "actor.lr=1e-6",
        "model.gradient_checkpointing=true", "reward.functions={count: 1.0}", f"trainer.device={'cuda' if cuda else 'cpu'}",
        f"trainer.total_steps={args.steps}", "trainer.val_before_train=false", "trainer.loggers=[jsonl]",
        "trainer.progress_bar=false", f"trainer.output_dir={out}", f"trainer.experiment_name={args.variant}",
        "trainer.resume=none", *side]
    result = {"variant": args.variant, "cap_gib": args.cap_gib or round(total / GIB, 1), "oom": False}
    peak = (lambda f: round(f() / GIB, 2)) if cuda else (lambda f: None)
    try:
        run_experiment(load_config(None, overrides))
    except torch.OutOfMemoryError as e:
        result.update(oom=True, error=str(e).splitlines()[0][:300])
    result.update(peak_allocated_gib=peak(torch.cuda.max_memory_allocated),
                  peak_reserved_gib=peak(torch.cuda.max_memory_reserved))
    metrics = out / args.variant / "metrics.jsonl"
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if "time/step" in r]  # the training steps
    for key in ("step", "rollout", "update"):
        vals = [r[f"time/{key}"] for r in rows[1:] if f"time/{key}" in r]  # after the first (warm-up)
        result[f"{key}_s"] = round(statistics.median(vals), 2) if vals else None
    result["steps_done"] = len(rows)
    # Seconds per optimizer step (all steps): the engine's step (clip, AdamW, and under offload the copy back to
    # the GPU), and the gradient hooks (device-to-host copies and fp32 accumulation, without backward itself).
    steps = max(1, timers["step"][1])
    result.update(engine_step_s=round(timers["step"][0] / steps, 2),
                  grad_hooks_s=round(timers["grad_to_master"][0] / steps, 2))
    print("RESULT " + json.dumps(result), flush=True)


def run_variant(args: argparse.Namespace, model: Path, data: Path, variant: str, cap: float) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--cap-gib", str(cap), "--model", str(model),
           "--data", str(data), "--workdir", args.workdir, "--steps", str(args.steps), "--batch", str(args.batch),
           "--n", str(args.n), "--new-tokens", str(args.new_tokens)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "timed_out": True}
    lines = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"variant": variant, "failed": proc.stderr[-1500:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/rllava_memory_24gb")
    ap.add_argument("--size", default="4b")
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--cap-gib", type=float, default=24.0)
    ap.add_argument("--baseline-cap-gib", type=float, default=0.0, help="0: the whole GPU")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="prompts a step")
    ap.add_argument("--n", type=int, default=8, help="samples a prompt")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--variants", default="offload,default", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per variant")
    ap.add_argument("--child", choices=sorted(VARIANTS))
    ap.add_argument("--model")
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.child:
        args.variant = args.child
        return child(args)
    model, data = prepare(Path(args.workdir), args.size, args.vocab)
    results = {}
    for variant in args.variants.split(","):
        cap = args.cap_gib if variant.startswith("offload") else args.baseline_cap_gib
        results[variant] = run_variant(args, model, data, variant, cap)
        print(json.dumps(results[variant]), file=sys.stderr, flush=True)
    base = results.get("default", {})
    ratios = {}  # each variant's peak allocated / the default's
    for variant, res in results.items():
        if variant != "default" and res.get("peak_allocated_gib") and base.get("peak_allocated_gib") and not base.get("oom"):
            ratios[variant] = round(res["peak_allocated_gib"] / base["peak_allocated_gib"], 3)
    print(json.dumps({"model_params_b": round(count_params(args.size, args.vocab) / 1e9, 3), **results,
                      "memory_ratio": ratios.get("offload"), "memory_ratios": ratios}))


if __name__ == "__main__":
    main()
