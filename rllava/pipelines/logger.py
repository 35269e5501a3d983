"""A run's outputs: metrics.jsonl, samples.jsonl, TensorBoard events, curves.png, a progress bar.

Under torchrun only rank 0 writes them; the other ranks get a `NullLogger` (`make_logger`).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVES = [  # (title, metric keys tried in order)
    ("reward", ["reward/mean"]),
    ("val accuracy", ["val/accuracy"]),
    ("response length", ["response/length_mean"]),
    ("KL", ["actor/kl_loss", "kl/mean", "actor/approx_kl"]),
    ("entropy", ["actor/entropy"]),
    ("step time (s)", ["time/step"]),
]
STALL_STEPS = 10  # steps in a row with every group's rollouts scored alike before the log warns of a stall
LOGGERS = ("console", "jsonl", "tensorboard", "wandb")  # trainer.loggers (run.check_settings checks the names)


class RunLogger:
    def __init__(self, run_dir: Path, loggers: list[str], total_steps: int, start_step: int = 0,
                 progress_bar: bool = True, wandb_config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._truncate_after(self.metrics_path, start_step)
        self._truncate_after(self.samples_path, start_step)
        self.console = "console" in loggers
        self.tb = None
        if not start_step:  # a fresh start: an earlier run's events would show under this run's curves
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.wandb = None
        if "wandb" in loggers:
            import wandb  # run.check_packages has made sure it is installed

            self.wandb = wandb.init(project="rllava", name=self.run_dir.name, config=wandb_config, resume="allow")
        self.stalled_steps = 0  # steps in a row with reward/zero_std_frac = 1; a resumed run counts on from its log
        for row in self.read_metrics() if start_step else []:
            if isinstance(row.get("reward/zero_std_frac"), (int, float)):
                self.stalled_steps = self.stalled_steps + 1 if row["reward/zero_std_frac"] >= 1.0 else 0
        self.bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        """On resume, drop lines a killed run wrote after its last checkpoint; on a fresh start (step 0), every
        line of an earlier run in this folder, its step-0 validation too."""
        if not path.exists():
            return
        rows = [(ln, _parse(ln)) for ln in path.read_text().splitlines()] if step > 0 else []
        keep = [ln for ln, row in rows if row is not None and row.get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        numeric = {k: v for k, v in clean.items() if isinstance(v, float) and math.isfinite(v)}
        if self.tb:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(numeric, step=step)
        self._watch_stall(step, numeric)
        if self.bar is not None:
            post = {k.split("/")[-1]: f"{numeric[k]:.3g}" for k in ("reward/mean", "val/accuracy", "time/tokens_per_s")
                    if k in numeric}
            if post:
                self.bar.set_postfix(post, refresh=False)
        elif self.console:
            keys = ("reward/mean", "reward/accuracy", "actor/loss", "actor/entropy", "val/accuracy", "time/step")
            shown = ", ".join(f"{k}={numeric[k]:.4g}" for k in keys if k in numeric)
            print(f"step {step}: {shown}", flush=True)

    def _watch_stall(self, step: int, numeric: dict[str, float]) -> None:
        """Warn once a stall lasts STALL_STEPS steps: every prompt's rollouts scored alike, so a group-relative
        estimator (GRPO, RLOO, ...) has had no signal; the reward and entropy say why."""
        if "reward/zero_std_frac" not in numeric:
            return
        self.stalled_steps = self.stalled_steps + 1 if numeric["reward/zero_std_frac"] >= 1.0 else 0
        if self.stalled_steps == STALL_STEPS:
            logger.warning(
                "step %d: for %d steps every prompt's rollouts scored alike (reward/zero_std_frac = 1): a group-relative "
                "estimator learns nothing. Reward %.3g, entropy %.3g. Entropy near 0: the policy collapsed (try "
                "actor.betas=[0.9,0.95], a lower actor.lr, or algorithm.kl_coef); reward at its best or worst: the "
                "prompts are too easy or too hard.", step, STALL_STEPS, numeric.get("reward/mean", math.nan),
                numeric.get("actor/entropy", math.nan))

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        with self.samples_path.open("a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.metrics_path)

    def plot(self) -> Path:
        """curves.png: one panel per curve in CURVES that has data."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        for ax, (title, keys) in zip(axes.flat, CURVES):
            key = next((k for k in keys if any(k in r for r in rows)), None)
            if key:
                pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
                ax.set_ylabel(key, fontsize=8)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.run_dir / "curves.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _parse(line: str) -> dict[str, Any] | None:
    """A jsonl line's row; None for a line that is not a JSON object (a run killed mid-write tears its last line)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [row for row in map(_parse, path.read_text().splitlines()) if row is not None]


class NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def advance(self) -> None:
        pass

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass

    def plot(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(is_main: bool, *args, **kwargs) -> RunLogger | NullLogger:
    """A `RunLogger(*args, **kwargs)` on the main rank, a `NullLogger` elsewhere."""
    return RunLogger(*args, **kwargs) if is_main else NullLogger()
