"""Training engine for one process on CPU or one GPU.

Precision: parameters (the master weights) stay in fp32 and the forward runs under
autocast in the compute dtype, so bf16 compute never loses small updates (a pure-bf16
AdamW at lr 1e-6 rounds most of them away). `master_weights_fp32=false` keeps parameters
in the compute dtype, trading that safety for memory. `optimizer_offload=True` keeps both: the
device holds compute-dtype parameters only, and the fp32 masters, gradients and AdamW states live
in CPU memory (rllava/engines/offload.py). fp16 compute scales the loss (rllava/engines/loss_scale.py): call
`backward(loss)` rather than `loss.backward()`.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rllava.config import ConfigError
from rllava.engines.loss_scale import LossScaler
from rllava.engines.offload import CPUMasterWeights
from rllava.engines.optimizers import OPTIMIZERS
from rllava.engines.registry import TRAIN_ENGINES
from rllava.models.load import resolve_dtype
from rllava.models.weights import save_hf_folder

ENGINE_FILE = "engine.pt"


# actor.lr_scheduler: the multiplier after warm-up at progress p in [0, 1] (config.LR_SCHEDULERS names them).
LR_DECAYS = {
    "constant": lambda p: 1.0,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "linear": lambda p: 1.0 - p,
}


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier on the base lr at step s: linear warm-up, then constant / cosine / linear decay."""
    if schedule not in LR_DECAYS:
        raise ValueError(f"unknown lr_scheduler {schedule!r}; choose one of {sorted(LR_DECAYS)}")
    decay = LR_DECAYS[schedule]

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, decay(min(1.0, progress)))

    return fn


def _some(names: list[str], shown: int = 3) -> str:
    """A count and the first few names, for an error message."""
    return f"{len(names)} {names[:shown]}" + (" ..." if len(names) > shown else "")


def _drop_unstepped(state: dict[str, Any], names: list[str]) -> bool:
    """Remove `names` (parameters the model no longer has) from a saved engine state if the optimizer never
    stepped them; whether it did.

    A parameter that never had a gradient (the LM head of a critic written before the critic dropped it)
    still holds its initial value and has no optimizer state, so a model built without it resumes exactly.
    The optimizer numbers its parameters in the order they were written: the survivors are renumbered.
    """
    written = list(state["model"])  # `save` writes them in the optimizer's order
    drop = {written.index(n) for n in names}
    optimizer = state["optimizer"]
    if any(i in optimizer["state"] for i in drop):
        return False
    new_index = {old: new for new, old in enumerate(i for i in range(len(written)) if i not in drop)}
    optimizer["state"] = {new_index[i]: v for i, v in optimizer["state"].items()}
    for group in optimizer["param_groups"]:
        group["params"] = [new_index[i] for i in group["params"] if i not in drop]
    for n in names:
        del state["model"][n]
    return True


@TRAIN_ENGINES.register("local", description="one process, CPU or one GPU; fp32 master weights with autocast")
class LocalTrainEngine:
    """Owns a module, its optimizer and lr schedule; knows nothing about RL."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple = (0.9, 0.999),
                 warmup_steps: int = 0, lr_scheduler: str = "constant", total_steps: int = 1,
                 max_grad_norm: float = 1.0, compute_dtype: str = "float32", device: str | torch.device = "cpu",
                 cpu_offload: bool = False, optimizer_offload: bool = False, optimizer: str = "adamw"):
        if cpu_offload:
            raise ConfigError("actor.param_offload needs actor.strategy=fsdp2 (the local engine keeps parameters on "
                             "its device; actor.optimizer_offload keeps everything else off it)")
        self.device = torch.device(device)
        self.model = model
        self.compute_dtype = resolve_dtype(compute_dtype)
        self.max_grad_norm = max_grad_norm
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in trained], [p for _, p in trained]
        self.offload: CPUMasterWeights | None = None
        if optimizer_offload:  # the model may arrive on the CPU in fp32: the masters are made from it first
            self.offload = CPUMasterWeights(self.params, self.device, self.compute_dtype)
            for p in model.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(self.compute_dtype).to(self.device)  # frozen (LoRA base): no master
            model.to(self.device)  # buffers; the parameters are there already
        # What the optimizer steps and clips: the CPU masters under offload, else the parameters themselves.
        self.opt_params = self.offload.masters if self.offload else self.params
        self.optimizer = OPTIMIZERS.get(optimizer)(self.opt_params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(lr_scheduler, warmup_steps, total_steps))
        self.skipped_steps = 0
        self.scaler = LossScaler(enabled=self.compute_dtype == torch.float16)

    @contextlib.contextmanager
    def compute(self, train: bool) -> Iterator[None]:
        """Autocast to the compute dtype when it is lower than the parameters' dtype."""
        param_dtype = next(self.model.parameters()).dtype
        self.model.train(train)
        use_autocast = self.compute_dtype != param_dtype and self.compute_dtype != torch.float32
        ctx = torch.autocast(self.device.type, dtype=self.compute_dtype) if use_autocast else contextlib.nullcontext()
        grad = contextlib.nullcontext() if train else torch.no_grad()
        with ctx, grad:
            yield

    def generation(self, train: bool = False) -> contextlib.AbstractContextManager:
        """The context for HF `generate` (a rollout engine's `compute`): eval, no-grad, autocast."""
        if train:
            raise ValueError("generation() is for rollouts: it runs without gradients")
        return self.compute(train=False)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss` (scaled under fp16 compute; `step` divides them back)."""
        self.scaler.scale(loss).backward()

    def step(self) -> dict[str, float]:
        """Clip, check finiteness, and apply one optimizer step. A non-finite gradient skips the update."""
        self.scaler.unscale_([p.grad for p in self.opt_params if p.grad is not None])
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.opt_params, max_norm)
        finite = bool(torch.isfinite(grad_norm))
        scale = self.scaler.scale_value
        self.scaler.update(finite)
        lr = self.scheduler.get_last_lr()[0]  # the rate this update uses (read before the schedule moves on)
        if finite:
            self.optimizer.step()
            if self.offload:
                self.offload.push_to_device()
            self.scheduler.step()  # a skipped update does not advance the schedule either
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm) if finite else float("nan"), "lr": lr,
                "skipped": float(not finite), **({"loss_scale": scale} if self.scaler.enabled else {})}

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        # The loss scale only under fp16: a bf16 run's scale (1.0, off) would otherwise become the starting scale of
        # an fp16 run resumed from it, where 1.0 lets the small gradients underflow (2000 steps to double it).
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "skipped_steps": self.skipped_steps,
                **({"loss_scale": self.scaler.state_dict()} if self.scaler.enabled else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = state.get("skipped_steps", 0)
        self.scaler.load_state_dict(state.get("loss_scale"))

    def save(self, folder: str | Path) -> None:
        """Write the training state: trainable parameters (what training changed), optimizer and schedule.

        Frozen parameters are not written (for LoRA, the base model): `load` expects a model built the same way.
        Under optimizer offload the fp32 masters are written, so a resumed run continues exactly.
        """
        Path(folder).mkdir(parents=True, exist_ok=True)
        trained = {n: t.detach().cpu() for n, t in zip(self.names, self.opt_params)}
        torch.save({"model": trained, **self.state_dict()}, Path(folder) / ENGINE_FILE)

    def load(self, folder: str | Path) -> None:
        """Restore what `save` wrote into this engine (built on the same model and optimizer settings)."""
        path = Path(folder) / ENGINE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no local engine state here (written by actor.strategy=local?)")
        state = torch.load(path, weights_only=False, map_location="cpu")
        try:
            self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as e:  # shape mismatches
            detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
            raise ConfigError(f"{path} was written for another model: {detail}") from e
        # The optimizer's state is per trained parameter: a different set (LoRA vs full, changed freeze settings)
        # would otherwise fail deep inside torch, with a parameter-group size error or a KeyError.
        missing = [n for n in self.names if n not in state["model"]]
        trained = set(self.names)
        unexpected = [n for n in state["model"] if n not in trained]
        has = {n for n, _ in self.model.named_parameters()}
        if unexpected and not missing and not has.intersection(unexpected) and _drop_unstepped(state, unexpected):
            unexpected = []  # parameters this model no longer has, which the run saved never changed
        if missing or unexpected:
            diff = ([f"trained here but not in it: {_some(missing)}"] if missing else []) + \
                ([f"in it but not trained here: {_some(unexpected)}"] if unexpected else [])
            raise ConfigError(f"{path} was written with other trained parameters (another model, LoRA vs full "
                              f"fine-tuning, or changed freeze settings?): {'; '.join(diff)}")
        if self.offload:
            self.offload.load_masters([state["model"][n] for n in self.names])
        self.load_state_dict(state)

    def export_hf(self, folder: str | Path, processor: Any = None, dtype: torch.dtype | None = None) -> None:
        """A plain HF folder (`from_pretrained` and vLLM load it) of the current weights.

        Under optimizer offload the trained weights are the fp32 CPU masters, not the compute-dtype device
        copy: they are what is written (cast to `dtype`; None writes them in fp32), so an fp32 export holds
        the trained values and a narrower one is rounded once, from them.
        """
        if self.offload is None:
            save_hf_folder(self.model, processor, folder, dtype=dtype)
            return
        with self.offload.masters_in_place():
            save_hf_folder(self.model, processor, folder, dtype=dtype or torch.float32)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors for saving or syncing to a rollout engine."""
        return self.model.state_dict()
