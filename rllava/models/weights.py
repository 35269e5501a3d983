"""The HF-named full weights of a training module: sharded tensors gathered, LoRA adapters merged.

One stream serves both consumers that need a plain checkpoint's view of the weights: the HF
folder written at every checkpoint (`save_hf_folder`) and the in-place weight sync of a vLLM
rollout engine. Neither copies the whole model: tensors are gathered a block at a time.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rllava.models.introspect import unwrap

# Sharded parameters are gathered a decoder block ("...layers.7.") at a time: the extra memory is one
# block's full tensors, and vLLM's layer-wise reload finishes each fused layer as soon as its parts arrive.
_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a (possibly FSDP2-sharded) parameter; a collective for DTensors."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def lora_delta(layer: nn.Module) -> torch.Tensor | None:
    """W_merged - W for a peft LoRA linear layer (sum over its active adapters), or None if it adds nothing."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return None  # already folded into base_layer.weight, or switched off
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(name):
            raise NotImplementedError(f"{type(layer).__name__}: DoRA adapters cannot be merged (export, vLLM sync) yet")
        a = full_tensor(layer.lora_A[name].weight).float()
        b = full_tensor(layer.lora_B[name].weight).float()
        d = (b @ a) * layer.scaling[name]
        delta = d if delta is None else delta + d
    if delta is not None and getattr(layer, "fan_in_fan_out", False):
        delta = delta.T
    return delta


def hf_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) for every parameter of `model`, LoRA merged, one decoder block at a time.

    Names are the HF module's own (what `save_pretrained` writes). For a peft model the adapters
    are folded in on the fly (W + B @ A * scaling) and the adapter tensors themselves are left out,
    so vLLM sees a plain checkpoint. Sharded parameters are gathered block by block: every rank
    must iterate the whole stream, in the same order.
    """
    hf = unwrap(model)
    bucket: list[tuple[str, torch.Tensor]] = []
    bucket_key = None
    for name, param in hf.named_parameters():
        if ".lora_" in name:
            continue  # folded into its base layer's weight below
        match = _BLOCK.match(name)
        key = match.group(1) if match else name
        if key != bucket_key and bucket:
            yield from bucket
            bucket = []
        bucket_key = key
        tensor = full_tensor(param.detach())
        if ".base_layer." in name:
            owner, leaf = name.split(".base_layer.")
            if leaf == "weight":
                delta = lora_delta(hf.get_submodule(owner))
                if delta is not None:
                    tensor = (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)
            name = f"{owner}.{leaf}"
        bucket.append((name, tensor))
    yield from bucket


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that belong in a checkpoint (those registered with persistent=True), by HF name."""
    out = {}
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[f"{module_name}.{name}" if module_name else name] = buf
    return out


def save_hf_folder(model: nn.Module, processor: Any, out: str | Path, is_main: bool = True,
                   dtype: torch.dtype | None = None) -> None:
    """A plain HF folder of `model`'s current weights that loads without peft (LoRA merged in).

    `dtype`: floating-point tensors are written in it, and the folder's config says so (the dtype
    `from_pretrained` and vLLM load by default); None writes them as they are. For a LoRA model the
    adapter alone is also written to `out/adapter`. Under FSDP2 every rank must call this
    (gathering shards is a collective); only `is_main` writes.
    """
    hf = unwrap(model)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    state = {}
    for name, tensor in hf_weights(model):
        if is_main:
            state[name] = cast(tensor)
    adapter = {n: full_tensor(p.detach()).cpu() for n, p in model.named_parameters() if ".lora_" in n}
    if not is_main:
        return
    state.update({n: cast(b) for n, b in persistent_buffers(hf).items() if n not in state})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, state_dict=state, safe_serialization=True)
    if dtype is not None:  # save_pretrained names the dtype of the module's parameters, not of `state`
        set_config_dtype(out / "config.json", dtype)
    if adapter:
        model.save_pretrained(out / "adapter", state_dict=adapter)  # peft keeps only the adapter's tensors
    if processor is not None:
        processor.save_pretrained(out)


def set_config_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """Name `dtype` in an HF config.json: its own dtype field and its sub-configs' (text, vision)."""
    config = json.loads(config_file.read_text())
    name = str(dtype).removeprefix("torch.")
    for section in [config, *(v for v in config.values() if isinstance(v, dict))]:
        for key in ("dtype", "torch_dtype"):
            if key in section:
                section[key] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
