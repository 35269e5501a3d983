"""Load any HF VLM (image-text-to-text) or causal LM, with its processor, as the config asks.

`load_model_and_processor(cfg.model)` handles a local folder or a hub name, dtype,
attention implementation, gradient checkpointing, freezing the vision tower, LoRA and
`trust_remote_code`. A text-only model's "processor" is its tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from rllava.config import ConfigError, MissingFileError, ModelConfig
from rllava.models.introspect import (  # noqa: F401  (re-exported: the helpers callers use with a loaded model)
    eos_token_ids,
    get_tokenizer,
    is_vlm,
    pad_token_id,
    vision_tower_params,
)
from rllava.models.lora import apply_lora

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

# Tried in order: the first auto class that knows the config's type loads the model.
AUTO_CLASSES = (AutoModelForImageTextToText, AutoModelForCausalLM)


def _auto_class_for(config: Any) -> type:
    remote = getattr(config, "auto_map", None) or {}
    for auto in AUTO_CLASSES:
        if type(config) in auto._model_mapping or auto.__name__ in remote:
            return auto
    raise ConfigError(f"model type {config.model_type!r} is neither an image-text-to-text model nor a causal LM "
                      f"(known to {', '.join(a.__name__ for a in AUTO_CLASSES)})")


def resolve_dtype(name: str | torch.dtype, what: str = "model.dtype") -> torch.dtype:
    """A torch dtype from a config name (float32, bfloat16, float16, or fp32, bf16, fp16); `what` names the setting."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError(f"{what}={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def local_path(path: str) -> str:
    """`path` with a leading "~" expanded (a YAML config keeps it literal, and `from_pretrained` does not expand it)."""
    return str(Path(path).expanduser()) if path and path.startswith("~") else path


def released_dtype(path: str, trust_remote_code: bool = False) -> torch.dtype | None:
    """The dtype an HF model folder's config names (the one it was released in), or None if it names none."""
    dtype = AutoConfig.from_pretrained(local_path(path), trust_remote_code=trust_remote_code).dtype
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype)
    return dtype if isinstance(dtype, torch.dtype) else None


def check_exists(path: str, key: str) -> None:
    """A local-looking `path` (absolute, ./, ~, or not 'org/name') exists: else an error naming the config `key`."""
    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") != 1
    if looks_local and not Path(local_path(path)).exists():
        raise MissingFileError(f"{key} {path!r} does not exist (and is not an 'org/name' hub id)")


def check_model_path(path: str) -> None:
    """`model.path` is an HF model folder or looks like a hub id: else a one-line error."""
    if not path:
        raise ConfigError("model.path is empty: give a local HF model folder or a hub name")
    p = Path(local_path(path))
    check_exists(path, "model.path")
    if p.is_file():  # the weights or config.json itself, say
        raise ConfigError(f"model.path {path!r} is a file: give the HF model folder that holds it (config.json, "
                          "weights, tokenizer)")
    if p.exists() and p.is_dir() and not (p / "config.json").exists():
        raise MissingFileError(f"model.path {path!r} has no config.json: not an HF model folder")


def load_model_config(path: str, trust_remote_code: bool = False, key: str = "model.path") -> Any:
    """The HF config of a model folder or hub id; one that cannot be read (broken config.json, an unknown hub id,
    offline, an unknown model_type without trust_remote_code) is a MissingFileError naming `key` and the path."""
    try:
        return AutoConfig.from_pretrained(local_path(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # MissingFileError is still an OSError for callers that catch one
        raise MissingFileError(f"{key} {path!r}: cannot load its config: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    """An exception's message up to its first line break (transformers' run on with advice about the hub)."""
    return str(e).strip().split("\n")[0]


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _lfs_hint(path: str) -> str:
    """Where a local folder holds Git LFS pointers instead of its files (a clone without git-lfs, the usual cause
    of an unreadable weights or tokenizer file), a note naming them; else ""."""
    folder = Path(local_path(path))
    if not folder.is_dir():
        return ""
    pointers = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.stat().st_size < 1024:
            with f.open("rb") as fh:
                if fh.read(len(_LFS_POINTER)) == _LFS_POINTER:
                    pointers.append(f.name)
    if not pointers:
        return ""
    return (f"; {', '.join(pointers)} {'is a Git LFS pointer' if len(pointers) == 1 else 'are Git LFS pointers'}, "
            "not the file itself: run `git lfs pull` in the folder (it was cloned without git-lfs)")


def check_vision_tower(cfg: ModelConfig, model: nn.Module) -> None:
    """`model.freeze_vision_tower` needs a model that has one."""
    if cfg.freeze_vision_tower and not is_vlm(model):
        raise ConfigError(f"model.freeze_vision_tower is set but {cfg.path!r} has no vision tower")


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing on every decoder layer (non-reentrant: works with frozen embeddings and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# Any real tokenizer turns this into ids; one built without its files (an empty vocabulary) gives none.
_PROBE_TEXT = "How many apples are there? 3"


def check_tokenizer(processor: Any, path: str) -> None:
    """A usable tokenizer: from a folder without its tokenizer files transformers quietly builds an empty one
    (1 token, every text -> []), and the run would fail much later with an error that points elsewhere."""
    tok = get_tokenizer(processor)
    if len(tok) <= 1 or not tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise MissingFileError(f"{path!r} has no usable tokenizer ({len(tok)} token(s), text encodes to no ids): "
                               "are its tokenizer files (tokenizer.json, tokenizer_config.json) missing? "
                               "model.tokenizer_path can name a folder that has them")


def load_processor(path: str, vlm: bool, trust_remote_code: bool = False) -> Any:
    """The processor of a VLM, the tokenizer of a text-only model; an error if the folder has no usable tokenizer."""
    loader = AutoProcessor if vlm else AutoTokenizer
    try:
        processor = loader.from_pretrained(local_path(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # a folder without its processor files, or with a broken one
        raise MissingFileError(f"{path!r}: cannot load its {'processor' if vlm else 'tokenizer'} ({_first_line(e)})"
                               f"{_lfs_hint(path)}; are its processor/tokenizer files missing? model.tokenizer_path "
                               "can name a folder that has them") from None
    check_tokenizer(processor, path)
    return processor


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> nn.Module:
    """The model alone, with dtype, attention, checkpointing, frozen vision tower and LoRA applied."""
    check_model_path(cfg.path)
    path = local_path(cfg.path)
    config = load_model_config(cfg.path, cfg.trust_remote_code)
    auto = _auto_class_for(config)
    try:
        model = auto.from_pretrained(path, dtype=resolve_dtype(dtype or cfg.dtype),
                                     attn_implementation=cfg.attn_implementation,
                                     trust_remote_code=cfg.trust_remote_code)
    except (OSError, SafetensorError) as e:  # a config.json but no (readable) weights: missing, truncated, LFS pointers
        raise MissingFileError(f"model.path {cfg.path!r}: cannot load its weights: {_first_line(e)}"
                               f"{_lfs_hint(cfg.path)}") from None
    model.to(device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    check_vision_tower(cfg, model)
    if cfg.freeze_vision_tower:
        for p in vision_tower_params(model):
            p.requires_grad_(False)
    if cfg.lora_rank > 0:
        model = apply_lora(model, cfg)
    return model


def load_model_and_processor(cfg: ModelConfig, device: str | torch.device = "cpu",
                             dtype: str | torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(model, processor) for `cfg`; `dtype` overrides `cfg.dtype` (e.g. fp32 master weights under autocast)."""
    if cfg.tokenizer_path:
        check_exists(cfg.tokenizer_path, "model.tokenizer_path")
    model = load_model(cfg, device, dtype)
    processor = load_processor(cfg.tokenizer_path or cfg.path, is_vlm(model), cfg.trust_remote_code)
    return model, processor
