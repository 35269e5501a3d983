"""The one training loop: steps, validation, checkpoints, logging and exact resume.

Pipelines (RLVR, SFT, agentic) plug in a `train_step(trainer, prompts) -> metrics`; the
loop around it is shared, never copied.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rllava.config import Config, ConfigError, to_dict, to_yaml
from rllava.engines import distributed as du
from rllava.pipelines.checkpoint import (
    CRITIC_DIR,
    FRESH_START,
    REFERENCE_FILE,
    checkpoint_folder,
    load_state,
    prune_checkpoints,
    rng_state,
    set_aside_after,
    set_rng_state,
)
from rllava.pipelines.evaluate import check_best_metric, evaluate
from rllava.pipelines.logger import RunLogger, make_logger
from rllava.pipelines.perf import PERF_REDUCTIONS, memory_metrics, profiled

_log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything a pipeline step may use, built once by `run.build_context`."""

    cfg: Config
    run_dir: Path
    model: Any
    processor: Any
    tokenizer: Any
    pad_id: int
    device: torch.device
    engine: Any  # train engine of the actor
    actor: Any
    rollout: Any
    reward: Any
    loader: Any  # PromptLoader over the train set
    val_prompts: list
    reference: Any = None
    critic: Any = None
    extra: dict = field(default_factory=dict)  # pipeline-specific state (e.g. a KL controller)
    export_dtype: Any = None  # the dtype of each checkpoint's HF folder (None: as trained)


class Pipeline(Protocol):
    def train_step(self, trainer: Trainer, prompts: list) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# How step metrics combine over ranks (the rest are averaged): totals add up, maxima stay maxima.
METRIC_REDUCTIONS = {"response/tokens": "sum", "response/length_max": "max", "filter/kept_groups": "sum",
                     **{f"reward/{k}": "sum" for k in ("errors", "errors_total", "timeouts_total", "crashes_total")},
                     **PERF_REDUCTIONS}


# What a cluster sends before it stops a job (SLURM: SIGTERM, or SIGUSR1 with `--signal=USR1@120`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StoppedBySignal(Exception):
    """Training stopped at a step boundary on a stop signal, after saving a checkpoint to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} "
                         "(trainer.resume=auto, the default, continues the run)")


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Record stop signals instead of dying on them: the loop saves and stops at the next step boundary."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    """Runs the same on every rank under torchrun: each rank trains on its share of each prompt batch."""

    def __init__(self, ctx: RunContext, pipeline: Pipeline):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.pipeline = pipeline
        self.step = 0
        self.best: tuple[float, int] | None = None  # (trainer.best_metric, step) of the best *saved* checkpoint
        # (trainer.best_metric, step) of the latest validation: the score of a checkpoint saved at that step. A
        # step validated but not saved has no checkpoint for keep_best to keep.
        self.pending_score: tuple[float, int] | None = None
        self.last_val: dict[str, float] = {}

    def reward_scorer(self) -> Any:
        """The reward role that keeps the run's error counters (the agentic pipelines wrap it: `.scorer`)."""
        return getattr(self.ctx.reward, "scorer", self.ctx.reward)

    def moves_reference(self) -> bool:
        """Whether reference.sync_steps moves a reference this run has (a supervised pipeline builds none)."""
        return bool(self.cfg.reference.sync_steps) and self.ctx.reference is not None

    # ---- state for exact resume

    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state (engines save theirs into the checkpoint folder); every rank must call it."""
        return {"step": self.step, "best": self.best, "rng": du.gather_objects(rng_state()),  # one per rank
                "loader": self.ctx.loader.state_dict(), "pipeline": self.pipeline.state_dict(),
                "reward": du.gather_objects(self.reward_scorer().state_dict()),  # each rank counts its own errors
                "world_size": du.world_size(), "config": to_dict(self.cfg)}

    def load(self, ckpt: Path) -> None:
        """Resume from a checkpoint folder written by `save`."""
        state = load_state(ckpt)
        if state.get("world_size", 1) != du.world_size():
            raise ConfigError(f"{ckpt} was written by {state.get('world_size', 1)} ranks, this run has "
                             f"{du.world_size()}: resuming needs the same number")
        self.step = state["step"]
        self.best = state["best"]
        self.ctx.loader.load_state_dict(state["loader"])
        try:
            self.ctx.engine.load(ckpt / "engine")
        except ConfigError as e:  # written for another model
            raise ConfigError(f"{e}{FRESH_START}") from e
        self.pipeline.load_state_dict(state["pipeline"])
        if self.ctx.critic:
            self.ctx.critic.load(ckpt / CRITIC_DIR)
        if self.moves_reference():
            self.ctx.reference.load(ckpt / REFERENCE_FILE)
        if state.get("reward"):  # absent in checkpoints written before the counters were saved
            self.reward_scorer().load_state_dict(state["reward"][du.rank()])
        set_rng_state(state["rng"][du.rank()])
        # As the logs drop lines after the step resumed from, so do the checkpoints: only now, every load done. A
        # resume refused above (other data, another model) leaves them in place, for the run to go on from its newest.
        self._set_aside_checkpoints_after(self.step)

    def _set_aside_checkpoints_after(self, step: int) -> None:
        """Move the run folder's checkpoints after `step` (an abandoned branch or an earlier run) out of the way."""
        du.barrier()  # every rank got here: a rank whose load failed exits, and torchrun ends the others waiting here
        if du.is_main():
            moved = set_aside_after(self.ctx.run_dir, step)
            if moved:
                _log.warning("checkpoints after step %d (%s) belong to an earlier or abandoned run: moved to %s; delete "
                             "them once not needed", step, ", ".join(p.name for p in moved), moved[0].parent)

    def save(self) -> None:
        ctx = self.ctx
        pending = self.pending_score
        if pending is not None and pending[1] == self.step:  # before state_dict: the checkpoint records itself as best
            if self.best is None or pending[0] > self.best[0]:
                self.best = pending
        with checkpoint_folder(ctx.run_dir, self.step, self.state_dict()) as tmp:
            if du.is_main():  # what `rllava eval` of this checkpoint reads (the run's config.yaml may change later)
                (tmp / "config.yaml").write_text(to_yaml(self.cfg))
            ctx.engine.export_hf(tmp / "model", ctx.processor, dtype=ctx.export_dtype)
            ctx.engine.save(tmp / "engine")
            if ctx.critic:
                ctx.critic.save(tmp / CRITIC_DIR)
            if self.moves_reference() and du.is_main():  # a moving reference is state (the same on every rank)
                ctx.reference.save(tmp / REFERENCE_FILE)
        if du.is_main():
            keep = {self.step}  # never the checkpoint just written
            if self.best and self.cfg.trainer.keep_best:
                keep.add(self.best[1])
            prune_checkpoints(ctx.run_dir, self.cfg.trainer.keep_last, keep)

    # ---- the loop

    def train_one_step(self, logger: RunLogger, validate: bool) -> None:
        """One training step on the next prompt batch: metrics (combined over ranks), validation when due, logging."""
        tc = self.cfg.trainer
        # Every rank draws the same global batch and trains on its share (whole prompt groups).
        prompts = du.shard_prompts(self.ctx.loader.next_batch(), du.rank(), du.world_size())
        profile = (profiled(self.ctx.run_dir, self.step + 1, self.ctx.device) if self.step + 1 in tc.profile_steps
                   else contextlib.nullcontext())
        t0 = time.perf_counter()
        with profile:
            metrics = self.pipeline.train_step(self, prompts)
        self.step += 1
        metrics["time/step"] = time.perf_counter() - t0
        metrics.update(memory_metrics(self.ctx.device))
        metrics = du.reduce_metrics(metrics, METRIC_REDUCTIONS)
        if "response/tokens" in metrics:
            metrics["time/tokens_per_s"] = metrics["response/tokens"] / metrics["time/step"]
        metrics["train/epoch"] = float(self.ctx.loader.epoch)
        if (tc.val_freq and self.step % tc.val_freq == 0) or validate:
            metrics.update(self.validate(logger))
        logger.log(self.step, metrics)
        logger.advance()

    def validate(self, logger: RunLogger) -> dict[str, float]:
        if not self.ctx.val_prompts:
            return {}
        metrics, samples = evaluate(self.ctx.rollout, self.ctx.reward, self.ctx.val_prompts,
                                    self.cfg.data.val_batch_size, self.cfg.trainer.log_samples)
        logger.log_samples(self.step, samples)
        self.last_val = metrics
        name = self.cfg.trainer.best_metric
        if name not in metrics and name != "val/accuracy":
            raise ConfigError(f"trainer.best_metric={name!r} is not among the validation metrics: "
                              f"{sorted(k for k in metrics if k.startswith('val/'))}")
        score = metrics.get(name, metrics.get("val/reward"))  # rewards without an accuracy: the mean reward
        if score is not None:
            self.pending_score = (score, self.step)
        return metrics

    def fit(self, resume: Path | None = None) -> dict[str, Any]:
        tc = self.cfg.trainer
        # A setting first read at the first validation (possibly the last step) fails before training.
        check_best_metric(self.cfg, [p.meta.get("data_source", "") for p in self.ctx.val_prompts])
        if resume is not None:
            self.load(resume)
        else:  # a fresh start: an earlier run's checkpoints here would be resumed by the next auto run
            self._set_aside_checkpoints_after(0)
        total = min(tc.total_steps, tc.total_epochs * max(1, self.ctx.loader.steps_per_epoch))
        logger = make_logger(du.is_main(), self.ctx.run_dir, tc.loggers, total, self.step, tc.progress_bar,
                             wandb_config=to_dict(self.cfg))
        try:
            with stop_requests() as received:  # from here on a stop signal ends the run at a step boundary, saved
                if tc.val_before_train and self.step == 0 and self.ctx.val_prompts:
                    logger.log(0, self.validate(logger))
                last_save = time.monotonic()
                while self.step < total:
                    self.train_one_step(logger, validate=self.step + 1 == total)
                    # The ranks decide together: saving is a collective, and a signal may reach only some of them.
                    signum = int(du.all_reduce_max(max(received, default=0)))
                    overdue = tc.save_every_min is not None and du.all_reduce_max(
                        float(time.monotonic() - last_save >= 60 * tc.save_every_min)) > 0
                    if (tc.save_freq and self.step % tc.save_freq == 0) or self.step == total or signum or overdue:
                        self.save()
                        last_save = time.monotonic()
                    if signum:
                        logger.plot()
                        raise StoppedBySignal(signum, self.step, self.ctx.run_dir / "checkpoints" / f"step_{self.step}")
            logger.plot()
        finally:
            logger.close()
        final = self.ctx.run_dir / "checkpoints" / f"step_{self.step}" / "model"
        return {"steps": self.step, "run_dir": str(self.ctx.run_dir), "final_model": str(final), **self.last_val,
                "best_val_accuracy": self.best[0] if self.best else None}
