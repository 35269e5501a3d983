"""A forward that runs each distinct prompt once: the n samples of a group share its KV cache.

A GRPO batch holds n responses per prompt. A plain forward runs every prompt, and its images
through the vision tower, n times. Here the distinct prompts run once with a KV cache, the
cache is gathered to one row per sample, and the responses run on top of it. Gradients flow
back through the gather, so values and gradients equal the plain forward's (up to float
summation order); tests/test_shared_prompt.py checks that for every model family.

Position ids are computed for the full sequences, as the plain forward computes them (M-RoPE
models through their own `get_rope_index`), then split between the two passes.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from rllava.data.types import PromptShare, concat_mm


def position_ids(base: nn.Module, inputs: dict[str, torch.Tensor], share: PromptShare) -> torch.Tensor:
    """Position ids of the full [B, P+T] sequences: [B, L], or M-RoPE's [3, B, L]."""
    mask = inputs["attention_mask"]
    rope_index = getattr(base, "get_rope_index", None)
    if rope_index is None:  # left padding: positions start at each row's first real token
        return (mask.long().cumsum(-1) - 1).clamp(min=0)
    params = inspect.signature(rope_index).parameters
    kwargs = {k: v for k, v in inputs.items() if k in params}
    grid_keys = [k for k in params if k not in kwargs and any(k in mm for mm in share.row_mm)]
    if grid_keys:  # small per-image metadata (grids, frame timing); no pixels
        grids = concat_mm([{k: mm[k] for k in grid_keys if k in mm} for mm in share.row_mm])
        kwargs.update({k: v.to(mask.device) for k, v in grids.items()})
    positions, _ = rope_index(**kwargs)
    return positions


def _cache_kwarg(base: nn.Module) -> str:
    """Newer transformers name the KV-cache argument `cache`; older ones (and unmigrated models) `past_key_values`."""
    params = inspect.signature(base.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    # A forward that passes **kwargs on (TinyLLaVA): the name of this transformers version.
    return "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def shared_prompt_hidden_states(base: nn.Module, inputs: dict[str, torch.Tensor], share: PromptShare,
                                response_width: int) -> torch.Tensor:
    """[B, T, H] hidden states at the positions that predict each response token.

    `inputs` holds the full [B, P+T] ids, mask and per-token extras without images; the
    distinct prompts' images come from `share`. Runs `base` twice: callers check
    `can_share_prompt` first (and, with a sharded model, agree on it across ranks).
    """
    L, T = inputs["input_ids"].shape[1], response_width
    P = L - T
    pos = position_ids(base, inputs, share)
    seq_keys = [k for k, v in inputs.items() if v.dim() == 2 and v.shape[1] == L and k != "attention_mask"]
    cache_arg = _cache_kwarg(base)

    prompt = {k: inputs[k][share.rows, :P] for k in seq_keys}
    prompt["attention_mask"] = inputs["attention_mask"][share.rows, :P]
    prompt["position_ids"] = pos[..., share.rows, :P]
    out = base(**prompt, **share.images, use_cache=True, return_dict=True)
    last = out.last_hidden_state[:, -1:][share.of_row]  # [B, 1, H]: predicts each row's first response token
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    cache.batch_select_indices(share.of_row)  # one cache row per sample (a differentiable gather)
    # The last response token predicts nothing: responses[:, :T-1] suffice.
    rest = {k: inputs[k][:, P:L - 1] for k in seq_keys}
    rest["attention_mask"] = inputs["attention_mask"][:, :L - 1]
    rest["position_ids"] = pos[..., P:L - 1]
    out = base(**rest, **{cache_arg: cache}, use_cache=True, return_dict=True)
    return torch.cat([last, out.last_hidden_state], 1)


def sharing_supported(model: nn.Module, training: bool) -> bool:
    """False for a training pass under gradient checkpointing: HF turns the KV cache off there."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.2x
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (checkpointing and training)


def can_share_prompt(model: nn.Module, prompt_width: int, response_width: int) -> bool:
    """Whether the KV-cache path is available and exact for this model and sequence size.

    Not where `sharing_supported` says no, not past a sliding attention window (the cache would
    drop prompt keys that the plain forward still masks in), and not for one-token responses
    (nothing runs on the cache: one plain pass is as cheap).
    """
    if response_width < 2 or not sharing_supported(model, model.training):
        return False
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(text, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(text, "layer_types", None) or []) or getattr(text, "use_sliding_window", False)
    return not (sliding and window and prompt_width + response_width > window)
