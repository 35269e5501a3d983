"""Training engine for torchrun: FSDP2 (`fully_shard`) with fp32 master shards and mixed-precision compute.

Sharding layout, found without per-family code:
- every child of every outermost `nn.ModuleList` (decoder layers, vision blocks, ...) is one unit;
- the root (the whole model) owns the rest: embeddings, LM head, final norms, patch embeddings, mergers.

The LM head deliberately stays with the root rather than being a unit of its own. The log-prob
code applies it in chunks, and the number of chunks differs between ranks (different token counts).
As its own unit, every chunk would all-gather and reduce-scatter, so ranks would issue different
collectives and deadlock. With the root it is gathered once per pass, and tied embeddings stay tied.

The log-prob code calls the model's base module and its LM head directly rather than the root's
forward, so the root's FSDP pre-forward never runs there. Forward pre-hooks on those two entry
points therefore unshard the root's own parameters (and cast floating inputs, as the root would);
FSDP's end-of-backward callback reduce-scatters their gradients and reshards them.

Gradients: FSDP averages them over ranks; `step()` rescales to the *sum*, so every rank's loss
must be its share of the global loss (divide by global denominators, see `distributed.all_reduce_sum`).
All ranks must run the same number of forward/backward passes (`distributed.pad_to_common_length`).

A VLM's vision blocks are units too, so every rank must also run the vision tower as often in each pass. A rank
whose micro-batch lacks images (or videos) that another rank has (a mixed dataset) runs the tower on one blank
image (`media_probe`, made by the processor) and adds 0 x its features to the base module's output: the same
collectives as the other ranks, and gradients that are exactly those of its own rows.

An optimizer that cannot step DTensors (registry meta `sharded=False`: bitsandbytes' 8-bit AdamW)
steps each rank's local shards instead: plain tensors that share the shards' storage, given the
shards' (clipped) gradients before each step. Its state is then per rank, saved beside the
distributed checkpoint (`optimizer_rank<r>.pt`); a resume needs the same number of ranks anyway.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rllava.config import ConfigError
from rllava.engines import distributed as du
from rllava.engines.local import lr_lambda
from rllava.engines.loss_scale import LossScaler
from rllava.engines.optimizers import OPTIMIZERS
from rllava.engines.registry import TRAIN_ENGINES
from rllava.models.introspect import unwrap, vision_tower_modules
from rllava.models.load import resolve_dtype
from rllava.models.weights import save_hf_folder

# Pixel inputs of a VLM's base module: each present one runs the vision tower (Qwen-VL: once for images, once for videos).
MEDIA_INPUTS = ("pixel_values", "pixel_values_videos")
# The raw tower outputs in `get_image_features`' ModelOutput. The base module reads only the features it computes from
# them (`pooler_output`, Qwen3-VL's `deepstack_features`); these can reach parameters the real image path never does
# (a SigLIP tower's post-layernorm in LLaVA-OneVision, the layers past `vision_feature_layer=-2` in LLaVA).
RAW_TOWER_OUTPUTS = ("last_hidden_state", "hidden_states", "attentions")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Children of every outermost ModuleList that hold parameters: the repeated layers and blocks."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(name.startswith(t + ".") for t in taken):
            continue
        children = [c for c in module if any(True for _ in c.parameters())]
        if children:
            blocks.extend(children)
            taken.append(name)
    return blocks


def _float_tensors(value: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model output (a tensor, a ModelOutput, or nested tuples and lists)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _float_tensors(v)]
    return []


def blank_image_inputs(processor: Any) -> dict[str, torch.Tensor] | None:
    """A VLM image processor's tensors for one blank 64 x 64 image (the FSDP2 engine's `media_probe`); None for a
    processor without one (a text-only model)."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    enc = image_processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


@TRAIN_ENGINES.register("fsdp2", description="torchrun + FSDP2 per block; fp32 master shards, mixed-precision compute",
                        distributed=True)
class FSDP2TrainEngine:
    """Same interface as LocalTrainEngine, for a model sharded over all ranks of the process group."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple = (0.9, 0.999),
                 warmup_steps: int = 0, lr_scheduler: str = "constant", total_steps: int = 1,
                 max_grad_norm: float = 1.0, compute_dtype: str = "float32", device: str | torch.device = "cpu",
                 cpu_offload: bool = False, optimizer_offload: bool = False, optimizer: str = "adamw",
                 media_probe: dict[str, torch.Tensor] | None = None):
        """`media_probe`: a VLM's image-processor output for one blank image (`blank_image_inputs`), run through the
        vision tower by a rank whose micro-batch has no images while another rank's has; without it that is refused."""
        if optimizer_offload:
            raise ConfigError("actor.optimizer_offload is for actor.strategy=local; under fsdp2 the optimizer state is "
                             "sharded over ranks, and actor.param_offload moves the shards to CPU memory")
        du.require_process_group("fsdp2")
        device = torch.device(device)
        if cpu_offload and device.type != "cuda":
            raise ValueError(f"cpu_offload moves parameters off the GPU; it needs a CUDA device, not {device}")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.compute_dtype = resolve_dtype(compute_dtype)
        self.max_grad_norm = max_grad_norm
        self.world = du.world_size()
        param_dtype = self.compute_dtype if self.compute_dtype != next(model.parameters()).dtype else None
        # Compute in the compute dtype, keep fp32 master shards, reduce gradients in fp32.
        self.mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        self.model = model
        self._media_probe = media_probe
        self._media_stub: torch.Tensor | None = None  # 0 x the blank image's features, added by the base's post-hook
        self._children = self._shard(model, CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
        self.params = [p for p in model.parameters() if p.requires_grad]
        # An optimizer for plain tensors steps views of this rank's shards (same storage, so the shards move).
        self.local_steps = OPTIMIZERS.entry(optimizer).meta.get("sharded") is False
        with torch.no_grad():
            self.stepped = [nn.Parameter(p.to_local(), requires_grad=False) for p in self.params] \
                if self.local_steps else self.params
        self.optimizer = OPTIMIZERS.get(optimizer)(self.stepped, lr=lr, betas=betas, weight_decay=weight_decay,
                                                   fused=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(lr_scheduler, warmup_steps, total_steps))
        self.skipped_steps = 0
        self.scaler = LossScaler(enabled=self.compute_dtype == torch.float16)
        self._generating = False

    # ---- sharding

    def _shard(self, model: nn.Module, offload: OffloadPolicy) -> list[FSDPModule]:
        mesh = init_device_mesh(self.device.type, (self.world,))
        kwargs = dict(mesh=mesh, mp_policy=self.mp_policy, offload_policy=offload)
        hf = unwrap(model)
        children = repeated_blocks(model)
        if not children:
            # The root's gradients are reduced by FSDP's end-of-backward callback, which only a unit's backward queues.
            raise ValueError(f"{type(hf).__name__} has no repeated blocks (nn.ModuleList of layers) to shard with fsdp2")
        for module in children:
            fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)
        # The root is normally initialised by its first forward; the entry points below are called
        # before it ever runs, and would otherwise each make themselves an FSDP root.
        model._get_fsdp_state()._lazy_init()
        # (A wrapper such as the critic's value model has neither: its own forward, the root's, is the entry.)
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        entry_points = [m for m in (getattr(hf, "base_model", hf), head) if m is not None and m is not model]
        self._root_probe = self._root_owned_param(model, children)
        for module in entry_points:
            module.register_forward_pre_hook(self._unshard_root, with_kwargs=True)
        media_entry = self._media_entry(model)
        if media_entry is not None:  # after `_unshard_root`: a stand-in tower run needs the root's vision parameters
            self._media_probe = self._probe_inputs(media_entry, self._media_probe)
            media_entry.register_forward_pre_hook(self._same_media_on_every_rank, with_kwargs=True)
            media_entry.register_forward_hook(self._add_media_stub)
        return children

    def _probe_inputs(self, base: nn.Module, probe: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """The probe's tensors that `base.get_image_features` takes, on the device and (pixels) in the compute dtype,
        made once; None where there is no probe or no generic way to run the tower alone (mixed media are refused)."""
        import inspect

        if probe is None or not hasattr(base, "get_image_features"):
            return None
        accepted = inspect.signature(base.get_image_features).parameters
        dtype = self.mp_policy.param_dtype
        return {k: v.to(self.device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
                for k, v in probe.items() if k in accepted}

    @staticmethod
    def _media_entry(model: nn.Module) -> nn.Module | None:
        """The base module of a VLM (what takes the pixel inputs, also inside a critic's value model); None for an LM."""
        from transformers import PreTrainedModel

        hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
        return hf.base_model if hf is not None and vision_tower_modules(hf) else None

    def _same_media_on_every_rank(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pre-hook on a VLM's base module: for each media input (images, videos) another rank has and this one
        lacks, run the vision tower once on the blank probe image, so that every rank gathers its units as often.

        Each vision block is an FSDP unit that all-gathers where it runs; a text-only micro-batch would never run
        the vision tower and the ranks would issue different collectives (a gloo size error, an NCCL hang or
        garbage). While generating every unit is gathered already, so the ranks may differ there.
        """
        self._media_stub = None
        if self._generating:
            return
        has = [float(kwargs.get(k) is not None) for k in MEDIA_INPUTS]
        counts = torch.tensor([*has, float(self._media_probe is None)], device=du.comm_device())
        torch.distributed.all_reduce(counts)  # per media input: ranks that have it; last: ranks without a probe
        *counts, no_probe = counts.tolist()
        mixed = [k for k, c in zip(MEDIA_INPUTS, counts) if 0 < c < self.world]
        if mixed and no_probe:  # every rank stops here: one that went on would wait in the tower's all-gather
            raise ConfigError(
                f"actor.strategy=fsdp2: this forward has {mixed} on {int(max(counts))} of {self.world} ranks "
                f"(this rank {du.rank()}: {'yes' if sum(has) else 'no'}) and the engine has no media_probe, a blank "
                "image to run the vision tower on where they are missing (the processor has no image_processor, or "
                "the model no get_image_features); FSDP needs the tower to run on every rank or on none")
        missing = [k for k, c, h in zip(MEDIA_INPUTS, counts, has) if c > 0 and not h]
        if not missing:
            return
        # Qwen-VL runs its one tower for images and for videos alike: a missing kind is one more run of the tower.
        self._media_stub = sum(self._vision_stand_in(module) for _ in missing)

    def _vision_stand_in(self, base: nn.Module) -> torch.Tensor:
        """0 x the sum of the image features (vision tower and connector) on the blank probe image: a zero that reaches
        the parameters a real image reaches, so their gradients here are zeros rather than missing."""
        features = base.get_image_features(**self._media_probe)
        # Only what the base module reads: FSDP reduce-scatters the gradients of the parameters that have one, so the
        # stand-in must reach exactly the parameters a real image reaches (more is a collective of another size too).
        if isinstance(features, dict) and "pooler_output" in features:
            features = [v for k, v in features.items() if k not in RAW_TOWER_OUTPUTS]
        outputs = _float_tensors(features)
        # Zero each element before summing: an overflowed (fp16) feature is 0 x inf = NaN, mapped to 0 here, whereas
        # 0 x (a sum of features) is NaN as soon as two of them are inf, or the finite ones overflow the sum.
        return sum(torch.nan_to_num(t.float() * 0.0, nan=0.0).sum() for t in outputs)

    def _add_media_stub(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Post-hook on a VLM's base module: add the stand-in vision run's zero to the hidden states."""
        stub, self._media_stub = self._media_stub, None
        if stub is None:
            return output
        if isinstance(output, tuple):
            return (output[0] + stub.to(output[0].dtype), *output[1:])
        output.last_hidden_state = output.last_hidden_state + stub.to(output.last_hidden_state.dtype)
        return output

    @staticmethod
    def _root_owned_param(model: nn.Module, children: list[nn.Module]) -> tuple[nn.Module, str] | None:
        """(module, name) of one parameter the root owns: a DTensor there means the root is sharded."""
        inside = {id(m) for c in children for m in c.modules()}
        for module in model.modules():
            if id(module) in inside:
                continue
            for name, p in module.named_parameters(recurse=False):
                if isinstance(p, DTensor):
                    return module, name
        return None

    def _unshard_root(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Pre-hook on the entry points: gather the root's own parameters and cast inputs, as its forward would."""
        probe = self._root_probe
        if probe is not None and isinstance(getattr(*probe), DTensor):
            self.model.unshard()
        dtype = self.mp_policy.param_dtype
        if dtype is None:
            return args, kwargs

        def cast(x: Any) -> Any:
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    # ---- compute

    @contextlib.contextmanager
    def compute(self, train: bool) -> Iterator[None]:
        """Train/eval mode and grad switch; FSDP casts parameters itself, so no autocast."""
        self.model.train(train)
        grad = contextlib.nullcontext() if train else torch.no_grad()
        try:
            with grad:
                yield
        finally:
            if not train and not self._generating:
                self.model.reshard()  # no backward will free the root's gathered parameters

    @contextlib.contextmanager
    def generation(self, train: bool = False) -> Iterator[None]:
        """Eval + no-grad with every unit gathered once, for HF `generate` (usable as a rollout `compute`).

        While it is open no forward issues a collective. HF `generate` still syncs the ranks itself: on
        an FSDP module it turns on `synced_gpus` (an all-reduce per token; a rank whose sequences have
        all ended keeps stepping until every rank's have), so every rank must make as many `generate`
        calls. Costs the full model in the compute dtype on each device.
        """
        if train:
            raise ValueError("generation() is for rollouts: it runs without gradients")
        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        self._generating = True
        self.model.train(False)
        try:
            for m in self._children:
                m.set_reshard_after_forward(False, recurse=False)
            for m in units:
                m.unshard()
            with torch.no_grad():
                yield
        finally:
            for m in self._children:
                m.set_reshard_after_forward(True, recurse=False)
            for m in units:
                m.reshard()
            self._generating = False

    # ---- optimisation

    def _local_grads(self) -> list[torch.Tensor]:
        """This rank's gradient shards (fully_shard on the root manages every parameter, so all are DTensors)."""
        return [p.grad.to_local() for p in self.params if p.grad is not None]

    def _grad_norm(self, local_grads: list[torch.Tensor]) -> float:
        """L2 norm of the FSDP-averaged gradient: squared shard norms summed over ranks."""
        dev = du.comm_device()
        total = torch.zeros((), dtype=torch.float64, device=dev)
        if local_grads:
            total += torch.stack(torch._foreach_norm(local_grads, 2.0)).double().pow(2).sum().to(dev)
        torch.distributed.all_reduce(total)
        return float(total.sqrt())

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss` (scaled under fp16 compute; `step` divides them back)."""
        self.scaler.scale(loss).backward()

    def step(self) -> dict[str, float]:
        """Clip, check finiteness, and apply one optimizer step. A non-finite gradient skips the update (on every rank).

        FSDP leaves the rank-average of the gradients; scaling by the world size gives their sum,
        fused into the clipping factor (and so is dividing by an fp16 loss scale).
        """
        grads = self._local_grads()
        scale = self.scaler.scale_value
        grad_norm = self._grad_norm(grads) * self.world / scale
        finite = math.isfinite(grad_norm)
        self.scaler.update(finite)  # the same on every rank: the norm is
        lr = self.scheduler.get_last_lr()[0]  # the rate this update uses (read before the schedule moves on)
        if finite:
            clip = 1.0
            if self.max_grad_norm > 0:
                clip = min(1.0, self.max_grad_norm / (grad_norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
            if grads:
                torch._foreach_mul_(grads, clip * self.world / scale)
            if self.local_steps:
                for local, p in zip(self.stepped, self.params):
                    local.grad = None if p.grad is None else p.grad.to_local()
            self.optimizer.step()
            self.scheduler.step()  # a skipped update does not advance the schedule either
        else:
            self.skipped_steps += 1
        self.zero_grad()
        return {"grad_norm": grad_norm if finite else float("nan"), "lr": lr,
                "skipped": float(not finite), **({"loss_scale": scale} if self.scaler.enabled else {})}

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.local_steps:
            for p in self.params:
                p.grad = None

    # ---- state

    def _optimizer_fresh(self) -> bool:
        """Whether the optimizer has not stepped yet (on every rank: they must write the same keys)."""
        return du.all_reduce_max(float(bool(self.optimizer.state))) == 0.0

    def _state(self, with_optimizer: bool) -> dict[str, Any]:
        state = {"scheduler": self.scheduler.state_dict(), "skipped_steps": self.skipped_steps}
        if self.scaler.enabled:
            state["loss_scale"] = self.scaler.state_dict()
        if with_optimizer:  # (on an optimizer that has not stepped yet, DCP first takes a zero-lr step)
            state["model"], state["optimizer"] = get_state_dict(self.model, self.optimizer)
        else:
            state["model"] = get_model_state_dict(self.model)
        return state

    def state_dict(self) -> dict[str, Any]:
        """Sharded (DTensor) model and optimizer state plus schedule: what `dcp.save` writes.

        An optimizer that has not stepped yet is written as `optimizer_fresh` instead: reading its state
        through DCP would take a zero-lr step first, leaving AdamW a step count (and so a bias correction)
        that the run would not have had without the save.
        """
        if self.local_steps:  # per-rank optimizer state: saved beside the checkpoint (`save`)
            return self._state(with_optimizer=False)
        if self._optimizer_fresh():
            return {**self._state(with_optimizer=False), "optimizer_fresh": True}
        return self._state(with_optimizer=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.local_steps:
            set_model_state_dict(self.model, state["model"])
        elif "optimizer" not in state:  # saved before the first step: the optimizer starts afresh, as it did there
            set_model_state_dict(self.model, state["model"])
            self.optimizer.state.clear()
        else:  # strict=False: parameters that never had a gradient legitimately have no optimizer state (see `load`)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.scaler.load_state_dict(state.get("loss_scale"))

    def save(self, folder: str | Path) -> None:
        """Write this engine's full training state as a distributed checkpoint (every rank writes its shards)."""
        dcp.save(self.state_dict(), checkpoint_id=str(folder))
        if self.local_steps:
            torch.save(self.optimizer.state_dict(), Path(folder) / f"optimizer_rank{du.rank()}.pt")

    def load(self, folder: str | Path) -> None:
        """Restore what `save` wrote into this engine (built on the same model and optimizer settings)."""
        if not Path(folder, ".metadata").exists():
            raise FileNotFoundError(f"{folder}: not a distributed checkpoint (no .metadata); written by engine.save?")
        saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
        if self.local_steps:
            state = self._without_unsaved_scale(self._state(with_optimizer=False), saved)
            dcp.load(state, checkpoint_id=str(folder))
            self.load_state_dict(state)
            saved_optimizer = torch.load(Path(folder) / f"optimizer_rank{du.rank()}.pt", weights_only=False)
            saved_count = sum(len(g["params"]) for g in saved_optimizer["param_groups"])
            if saved_count != len(self.stepped):  # torch would fail with a parameter-group size error
                raise ConfigError(f"{folder}: its optimizer state is for {saved_count} parameters, this engine trains "
                                  f"{len(self.stepped)} (another model or changed freeze settings; or a critic saved with "
                                  "its LM head, before rllava dropped it: resume that one with the rllava that wrote it)")
            self.optimizer.load_state_dict(saved_optimizer)
            return
        # What the checkpoint holds decides the template, not this engine's optimizer (fresh when resuming).
        state = self._without_unsaved_scale(self._state(with_optimizer="optimizer_fresh" not in saved), saved)
        if "optimizer" in state:
            # A parameter that had no gradient before the save (an unused head, a vision tower on text-only
            # data) has no optimizer state there; it must have none after loading either, as in the run saved.
            with_state = {k.rsplit(".", 1)[0] for k in saved if k.startswith("optimizer.state.")}
            optim_state = state["optimizer"]["state"]
            for fqn in [f for f in optim_state if f"optimizer.state.{f}" not in with_state]:
                del optim_state[fqn]
        dcp.load(state, checkpoint_id=str(folder))
        self.load_state_dict(state)

    @staticmethod
    def _without_unsaved_scale(state: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
        """`state` less its loss scale where the checkpoint has none (written by a bf16 or fp32 run): DCP fails on a
        key the checkpoint lacks, and an fp16 run resumed from it starts from the initial scale."""
        if "loss_scale.scale" not in saved:
            state.pop("loss_scale", None)
        return state

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors on every rank, e.g. for syncing a rollout engine (see `iter_full_state`)."""
        return dict(self.iter_full_state())

    def iter_full_state(self, device: str | torch.device | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) one tensor at a time, so at most one gathered tensor is alive; all ranks must iterate."""
        state = self.model.state_dict()
        uses = Counter(id(t) for t in state.values())  # tied weights appear under two names: gather once
        shared: dict[int, torch.Tensor] = {}
        for name, t in state.items():
            full = shared.get(id(t))
            if full is None:
                full = t.full_tensor() if isinstance(t, DTensor) else t
                full = full.to(device) if device is not None else full
            uses[id(t)] -= 1
            if uses[id(t)]:
                shared[id(t)] = full
            else:
                shared.pop(id(t), None)
            yield name, full

    def export_hf(self, folder: str | Path, processor: Any = None, dtype: torch.dtype | None = None) -> None:
        """Gather full weights (LoRA merged) and write a plain HF folder on rank 0; every rank must call it."""
        save_hf_folder(self.model, processor, folder, is_main=du.is_main(), dtype=dtype)
        du.barrier()
