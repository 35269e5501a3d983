"""rllava vs TRL's GRPOTrainer, side by side on CPU: step time and peak RSS.

Both sides train the same tiny Qwen2-VL ("small", ~31 M params, fp32) with GRPO on the same
counting prompts (one image each): 1 prompt x 8 completions x exactly 64 new tokens per step,
AdamW with the same lr/betas/eps/clip and a constant lr, one update per step (mini-batch =
whole batch, 1 epoch), no KL (beta=0, so no reference model), temperature 1.0, no gradient
checkpointing, the same number of torch threads (2).

    python benchmarks/vs_trl.py            # 2 warm-up + 10 measured steps per side
    python benchmarks/vs_trl.py --quick    # 1 warm-up + 5 measured steps
    python benchmarks/vs_trl.py --gradient-checkpointing   # both sides recompute activations (TRL's default)

Each side runs in its own subprocess (so peak RSS is per side). Both load at the same time, then
take turns one training step at a time through a pipe handshake: a measured step never shares
the CPU with the other side, and slow drifts in other jobs' load hit both sides alike. Each side
prints its per-step times; the parent then prints ONE JSON line with the medians and ratios.

A step (the headline `*_step_s`) is the wall time from the top of one training-loop iteration to
the top of the next, so it holds everything the loop does once per step on that side: fetching
the prompt (image decoding + processor), generation, reward scoring, the log-prob forward with
grad (plus entropy), backward, grad clipping, the AdamW step and per-step logging. With one update
per step neither side runs a separate old-log-prob pass; with beta=0 neither runs a reference pass.
Also reported: `*_step_cpu_s` (process CPU time of the same span, all threads), rllava's own
`time/step` from metrics.jsonl and TRL's on_step_begin -> on_step_end time (`*_train_step_s`; both
exclude the prompt fetch). Peak RSS is the process's VmHWM read at the top of the last, unmeasured
step: it covers every measured step and excludes end-of-run work (rllava's final checkpoint).

Exactly 64 tokens: both sides pass `min_new_tokens=64` to `generate`, rllava through
`rollout.generate_kwargs` and TRL through `GRPOConfig.generation_kwargs` (the model folder's
generation_config.json sets it too, which TRL's `generate` also reads; rllava's rollout ignores a
folder's sampling settings). Both sides report their mean completion length.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE_SUFFIX = " Answer with a number."  # the counting task's template: "{{ prompt }} Answer with a number."
IMAGE_MARKER = "<image>"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    VmHWM where /proc has it: unlike ru_maxrss it starts afresh at exec, while ru_maxrss carries
    over the parent's RSS at fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measured_median(values: list[float], warmup: int, steps: int) -> float:
    """Median of the measured steps: after `warmup`, and not the trailing step some lists also hold."""
    measured = values[warmup:warmup + steps]
    if len(measured) < steps:
        raise RuntimeError(f"expected {warmup + steps} step times, got {len(values)}")
    return statistics.median(measured)


class Gate:
    """The child's end of the turn-taking pipe pair: announce a step boundary, then wait for the go."""

    def __init__(self, spec: str | None):
        fds = [int(x) for x in spec.split(",")] if spec else None
        self.go = os.fdopen(fds[0], "rb", buffering=0) if fds else None
        self.ready = os.fdopen(fds[1], "wb", buffering=0) if fds else None

    def wait_turn(self) -> None:
        if self.ready is not None:
            self.ready.write(b"r")
            if self.go.read(1) != b"g":
                raise SystemExit("vs_trl: the parent went away")


class StepClock:
    """Called at the top of every training-loop iteration: closes the previous step's timing, records
    peak RSS so far, waits for this side's turn, then starts timing the next step."""

    def __init__(self, side: str, gate: Gate):
        self.side = side
        self.gate = gate
        self.wall: list[float] = []
        self.cpu: list[float] = []  # process CPU time, all threads
        self.rss: list[float] = []
        self.t0: float | None = None
        self.c0 = 0.0

    def mark(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.t0 is not None:
            self.wall.append(now - self.t0)
            self.cpu.append(cpu - self.c0)
            print(f"[{self.side}] step {len(self.wall)}: {self.wall[-1]:.3f} s wall, {self.cpu[-1]:.3f} s cpu",
                  flush=True)
        self.rss.append(peak_rss_mb())
        self.gate.wait_turn()
        self.t0, self.c0 = time.perf_counter(), time.process_time()


# ---------------------------------------------------------------- setup (parent)


def prepare(workdir: Path, new_tokens: int) -> tuple[Path, Path]:
    """Tiny Qwen2-VL (small) and counting data, written once per workdir; the model never stops early."""
    from transformers import GenerationConfig

    from rllava.models.tiny import make_tiny_model
    from rllava.tasks import make_task

    model_dir, data_dir = workdir / "model", workdir / "data"
    if not (model_dir / "config.json").exists():
        make_tiny_model("qwen2_vl", model_dir, size="small", seed=0)
    gen = GenerationConfig.from_pretrained(model_dir)
    gen.min_new_tokens = new_tokens  # EOS is masked until `new_tokens` tokens exist: every response is full length
    gen.save_pretrained(model_dir)
    if not (data_dir / "train.parquet").exists():
        make_task("counting", data_dir, n=200, seed=0)
    return model_dir, data_dir


# ---------------------------------------------------------------- the two sides (children)


def run_ours(args: argparse.Namespace, clock: StepClock) -> dict:
    """rllava through its own `run_experiment` (what `rllava train` calls), with the loop's prompt fetch timed."""
    from rllava.config import load_config
    from rllava.data.loader import PromptLoader
    from rllava.pipelines.run import run_experiment

    fetch = PromptLoader.next_batch

    def timed_next_batch(self):  # the trainer calls this once at the top of every iteration
        clock.mark()
        return fetch(self)

    PromptLoader.next_batch = timed_next_batch
    out_dir = Path(args.workdir) / "runs"
    shutil.rmtree(out_dir / "ours", ignore_errors=True)  # a fresh run: no resume, no old metrics lines
    overrides = [
        f"data.train_files={Path(args.data) / 'train.parquet'}", "data.val_files=",
        f"data.template='{{{{ prompt }}}}{TEMPLATE_SUFFIX}'", "data.batch_size=1",  # quoted: values are YAML
        f"model.path={args.model}", "model.dtype=float32",
        "algorithm.adv_estimator=grpo", "algorithm.policy_loss=ppo", "algorithm.loss_agg_mode=token-mean",
        "algorithm.kl_coef=0.0",
        f"actor.lr={args.lr}", "actor.ppo_epochs=1", "actor.mini_batch_size=0", "actor.max_grad_norm=1.0",
        "actor.weight_decay=0.0", "actor.lr_scheduler=constant",
        f"rollout.n={args.n}", f"rollout.temperature={args.temperature}", f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.generate_kwargs={{min_new_tokens: {args.new_tokens}}}",  # the rollout ignores the folder's sampling settings
        "reward.functions={count: 1.0}",
        f"trainer.total_steps={args.total_steps}", f"trainer.device={args.device}", "trainer.val_before_train=false",
        "trainer.loggers=[jsonl]", "trainer.progress_bar=false", f"trainer.output_dir={out_dir}",
        "trainer.experiment_name=ours", "trainer.resume=none", f"trainer.seed={args.seed}",
        f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        *args.ours_override,
    ]
    run_experiment(load_config(None, overrides))
    rows = [json.loads(ln) for ln in (out_dir / "ours" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {"train_step_s": [r["time/step"] for r in rows], "completion_len": [r["response/length_mean"] for r in rows]}


def trl_dataset(data_dir: Path):
    """The counting rows as TRL wants them: a conversational `prompt` plus an `image` column."""
    import pandas as pd
    from datasets import Dataset
    from PIL import Image

    df = pd.read_parquet(data_dir / "train.parquet")
    rows = []
    for prompt, answer, images in zip(df["prompt"], df["answer"], df["images"]):
        text = prompt.replace(IMAGE_MARKER, "") + TEMPLATE_SUFFIX  # TRL puts the image block before the text, as rllava does
        with Image.open(data_dir / images[0]) as img:
            rows.append({"prompt": [{"role": "user", "content": text}], "image": img.convert("RGB"), "answer": answer})
    return Dataset.from_list(rows)


def count_reward_func(completions: list, answer: list, **kwargs) -> list[float]:
    """rllava's `count` reward, called from TRL."""
    from rllava.rewards.count import count_reward

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [count_reward(t, a)["overall"] for t, a in zip(texts, answer)]


def run_trl(args: argparse.Namespace, clock: StepClock) -> dict:
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    step_s: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            clock.mark()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_s.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "runs" / "trl"), use_cpu=args.device == "cpu", bf16=False, fp16=False,
        model_init_kwargs={"dtype": "float32"}, gradient_checkpointing=args.gradient_checkpointing,
        per_device_train_batch_size=args.n, num_generations=args.n, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=args.temperature, top_p=1.0, top_k=0,
        learning_rate=args.lr, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        max_steps=args.total_steps, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed,
    )
    trainer = GRPOTrainer(model=str(args.model), reward_funcs=count_reward_func, args=config,
                          train_dataset=trl_dataset(Path(args.data)), callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
    trainer.train()
    return {"train_step_s": step_s, "completion_len": lengths}


SIDES = {"ours": run_ours, "trl": run_trl}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = StepClock(args.child, Gate(args.gate))
    start_rss = peak_rss_mb()
    if args.profile:  # cProfile of the whole child run (GPU waits show up in the call that syncs)
        import cProfile

        profiler = cProfile.Profile()
        extra = profiler.runcall(SIDES[args.child], args, clock)
        profiler.dump_stats(str(Path(args.profile) / f"{args.child}.prof"))
    else:
        extra = SIDES[args.child](args, clock)
    result = {"step_s": clock.wall, "step_cpu_s": clock.cpu, "peak_rss_mb": clock.rss[-1],
              "end_peak_rss_mb": peak_rss_mb(), "import_rss_mb": start_rss, "torch_threads": torch.get_num_threads(),
              **extra}
    if args.device == "cuda":  # the whole run's peak of tensors allocated on the GPU
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- parent


class SideFailed(RuntimeError):
    def __init__(self, name: str):
        super().__init__(f"vs_trl: the {name} side failed; see its output above")


class Side:
    """One side's subprocess and the parent's end of its turn-taking pipes."""

    def __init__(self, name: str, args: argparse.Namespace, model: Path, data: Path, workdir: Path):
        self.name = name
        self.result = workdir / f"{name}.json"
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, __file__, "--child", name, "--gate", f"{go_r},{ready_w}", "--result", str(self.result),
               "--model", str(model), "--data", str(data), "--workdir", str(workdir),
               "--total-steps", str(args.total_steps), "--n", str(args.n), "--new-tokens", str(args.new_tokens),
               "--lr", str(args.lr), "--temperature", str(args.temperature), "--threads", str(args.threads),
               "--seed", str(args.seed), "--device", args.device]
        if args.profile:
            cmd += ["--profile", str(args.profile)]
        if args.gradient_checkpointing:
            cmd += ["--gradient-checkpointing"]
        for o in args.ours_override:
            cmd += ["--ours-override", o]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
        self.proc = subprocess.Popen(cmd, env=env, pass_fds=(go_r, ready_w))
        os.close(go_r)
        os.close(ready_w)
        self.go = os.fdopen(go_w, "wb", buffering=0)
        self.ready = os.fdopen(ready_r, "rb", buffering=0)
        self.alive = True

    def wait_ready(self) -> None:
        """Block until the child is at the top of its next step; on EOF it has exited (done or failed)."""
        if self.ready.read(1) != b"r":
            self.alive = False
            if self.proc.wait() != 0:
                raise SideFailed(self.name)

    def run_one_step(self) -> None:
        """Let the child run one step (after its last step: run to exit) and wait until it is done."""
        self.go.write(b"g")
        self.wait_ready()

    def result_dict(self) -> dict:
        if self.proc.wait() != 0 or not self.result.exists():
            raise SideFailed(self.name)
        return json.loads(self.result.read_text())


def run_interleaved(names: list[str], args: argparse.Namespace, model: Path, data: Path, workdir: Path) -> dict:
    """Both sides load at once, then take turns one training step at a time, so a step never shares the
    CPU with the other side and both see the same background load (this machine is shared)."""
    sides = [Side(n, args, model, data, workdir) for n in names]
    try:
        for s in sides:
            s.wait_ready()
        while any(s.alive for s in sides):
            for s in sides:
                if s.alive:
                    s.run_one_step()
        return {s.name: s.result_dict() for s in sides}
    except SideFailed as e:
        for s in sides:
            if s.proc.poll() is None:
                s.proc.kill()  # only the children this run started
                s.proc.wait()
        raise SystemExit(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="measured steps per side (median over them)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per side, not measured")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 5 measured steps")
    p.add_argument("--workdir", default=None, help="model/data/runs folder (default: a fresh temp folder)")
    p.add_argument("--n", type=int, default=8, help="completions per step (one prompt)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per completion, exactly")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in backward on both sides (TRL's own default)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train and generate")
    p.add_argument("--ours-override", action="append", default=[],
                   help="extra rllava override for our side (repeatable), e.g. rollout.generate_kwargs={...}")
    p.add_argument("--profile", default=None, help="folder for a cProfile dump per side (<side>.prof)")
    p.add_argument("--only", choices=sorted(SIDES), default=None, help="run one side (for profiling)")
    # internal: one side in a subprocess
    p.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--gate", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.warmup, args.steps = 1, 5
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.only != "ours" and importlib.util.find_spec("trl") is None:
        p.error('TRL is not installed: pip install "trl>=1.0" (the `bench` extra), or pass --only ours')
    # One more step than measured: its start closes the last measured interval and reads peak RSS.
    args.total_steps = args.warmup + args.steps + 1
    os.environ.setdefault("TQDM_DISABLE", "1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rllava_vs_trl_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        out = benchmark(args, workdir)
    finally:
        if not args.workdir:  # a temp folder holds ~0.5 GB of model and checkpoints
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out), flush=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict:
    """Prepare model and data, run the sides interleaved, and reduce their step times to medians and ratios."""
    model, data = prepare(workdir, args.new_tokens)
    sides = [args.only] if args.only else ["trl", "ours"]
    load_before = os.getloadavg()[0]
    res = run_interleaved(sides, args, model, data, workdir)
    out: dict = {"device": args.device, "steps": args.steps, "warmup": args.warmup, "completions_per_step": args.n,
                 "new_tokens": args.new_tokens, "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing,
                 "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # other jobs on the machine
    for side, r in res.items():
        out[f"{side}_step_s"] = round(measured_median(r["step_s"], args.warmup, args.steps), 4)
        out[f"{side}_step_cpu_s"] = round(measured_median(r["step_cpu_s"], args.warmup, args.steps), 4)
        out[f"{side}_train_step_s"] = round(measured_median(r["train_step_s"], args.warmup, args.steps), 4)
        out[f"{side}_peak_rss_mb"] = round(r["peak_rss_mb"], 1)
        out[f"{side}_import_rss_mb"] = round(r["import_rss_mb"], 1)
        out[f"{side}_completion_len"] = round(statistics.mean(r["completion_len"]), 2) if r["completion_len"] else None
        out[f"{side}_torch_threads"] = r["torch_threads"]
        if "peak_gpu_mb" in r:
            out[f"{side}_peak_gpu_mb"] = round(r["peak_gpu_mb"], 1)
    if "ours" in res and "trl" in res:
        out["step_time_ratio"] = round(out["ours_step_s"] / out["trl_step_s"], 3)
        out["cpu_time_ratio"] = round(out["ours_step_cpu_s"] / out["trl_step_cpu_s"], 3)
        out["memory_ratio"] = round(out["ours_peak_rss_mb"] / out["trl_peak_rss_mb"], 3)
        if args.device == "cuda":
            out["gpu_memory_ratio"] = round(out["ours_peak_gpu_mb"] / out["trl_peak_gpu_mb"], 3)
    return out


if __name__ == "__main__":
    main()
