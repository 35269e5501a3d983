"""A forward that runs each distinct prompt once: the n samples of a group share its KV cache.

A GRPO batch holds n responses per prompt. A plain forward runs every prompt, and its images
through the vision tower, n times. Here the distinct prompts run once with a KV cache, the
cache is gathered to one row per sample, and the responses run on top of it. Gradients flow
back through the gather, so values and gradients equal the plain forward's (up to float
summation order); tests/test_shared_prompt.py checks that for every model family.

Position ids are computed for the full sequences, as the plain forward computes them (M-RoPE
models through their own `get_rope_index`), then split between the two passes.

Both passes use caches that a re-run leaves as they were: the prompt pass's layers store their
keys and values (a second call replaces them), and the response pass's layers read the gathered
prompt keys and values without appending. So the path also works under gradient checkpointing,
whose backward re-runs each layer's forward.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer
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


class _StoreLayer(DynamicLayer):
    """The prompt pass: keeps the layer's keys and values; a re-run (checkpoint recompute) replaces them."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """The response pass: attends over a fixed prefix (the gathered prompt keys and values) and the new
    states, and stores nothing, so a re-run sees the same prefix."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.device, self.keys, self.values, self.is_initialized = keys.device, keys, values, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def _checkpoint_layers(base: nn.Module) -> list[nn.Module]:
    return [m for m in base.modules() if hasattr(m, "_can_checkpoint_with_cache")]


def response_passes(lengths: list[int], overhead: int) -> list[list[int]]:
    """Rows (indices into `lengths`, the response tokens each row runs) grouped into response passes.

    Each pass is padded to its longest row. The rows of one prompt's group often differ several-fold in
    length, and one pass over all of them computes as much padding as tokens; passes over rows of similar
    lengths cost the padded tokens plus `overhead` each. The cheapest split of the rows sorted by length
    is found exactly (dynamic programming over the cut points).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best, cut = [0] + [float("inf")] * n, [0] * (n + 1)  # cost of the first j sorted rows; where its last pass starts
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of sorted rows i..j-1
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j]:j])
        j = cut[j]
    return passes[::-1]


def _prefix(stored: Cache, of_row: torch.Tensor) -> Cache:
    """The prompt pass's keys and values gathered to one prefix row per sample (a differentiable gather)."""
    return Cache(layers=[_PrefixLayer(layer.keys[of_row], layer.values[of_row]) for layer in stored.layers])


def _response_inputs(inputs: dict[str, torch.Tensor], seq_keys: list[str], pos: torch.Tensor, rows: torch.Tensor,
                     P: int, width: int) -> dict[str, torch.Tensor]:
    """The first `width` response positions of `rows`, to run on their prompts' cache."""
    out = {k: inputs[k][rows, P:P + width] for k in seq_keys}
    out["attention_mask"] = inputs["attention_mask"][rows, :P + width]
    out["position_ids"] = pos[..., rows, P:P + width]
    return out


def shared_prompt_hidden_states(base: nn.Module, inputs: dict[str, torch.Tensor], share: PromptShare,
                                response_width: int) -> torch.Tensor:
    """[B, T, H] hidden states at the positions that predict each response token (zeros past a row's end).

    `inputs` holds the full [B, P+T] ids, mask and per-token extras without images; the
    distinct prompts' images come from `share`. Runs `base` once on the prompts, then once per
    response pass (`response_passes`): callers check `can_share_prompt` first (and, with a
    sharded model, agree on it across ranks).
    """
    L, T = inputs["input_ids"].shape[1], response_width
    P = L - T
    pos = position_ids(base, inputs, share)
    seq_keys = [k for k, v in inputs.items() if v.dim() == 2 and v.shape[1] == L and k != "attention_mask"]
    cache_arg = _cache_kwarg(base)
    layers = _checkpoint_layers(base)
    for layer in layers:  # our caches are safe to re-run: let checkpointed layers keep them
        layer._can_checkpoint_with_cache = True
    try:
        prompt = {k: inputs[k][share.rows, :P] for k in seq_keys}
        prompt["attention_mask"] = inputs["attention_mask"][share.rows, :P]
        prompt["position_ids"] = pos[..., share.rows, :P]
        stored = Cache(layer_class_to_replicate=_StoreLayer)
        out = base(**prompt, **share.images, **{cache_arg: stored}, use_cache=True, return_dict=True)
        last = out.last_hidden_state[:, -1:][share.of_row]  # [B, 1, H]: predicts each row's first response token
        # The last response token predicts nothing: a row of r tokens runs its first r - 1 on the cache.
        runs = (inputs["attention_mask"][:, P:].sum(1) - 1).clamp(min=0).tolist()
        passes = [(rows, max(runs[i] for i in rows)) for rows in response_passes(runs, share.pass_tokens)]
        n_run = sum(width > 0 for _, width in passes)
        fillers = share.agree_passes(n_run) - n_run if share.agree_passes is not None else 0
        order, parts = [], []
        for rows, width in passes:
            order += rows
            if width == 0:  # one-token responses: their only hidden state is the prompt's last
                parts.append(last.new_zeros(len(rows), T - 1, last.shape[-1]))
                continue
            idx = torch.tensor(rows, device=last.device)
            out = base(**_response_inputs(inputs, seq_keys, pos, idx, P, width),
                       **{cache_arg: _prefix(stored, share.of_row[idx])}, use_cache=True, return_dict=True)
            parts.append(nn.functional.pad(out.last_hidden_state, (0, 0, 0, T - 1 - width)))
        row0 = torch.zeros(1, dtype=torch.long, device=last.device)
        for _ in range(fillers):  # another rank makes more passes: one token of row 0, in the graph at weight 0
            out = base(**_response_inputs(inputs, seq_keys, pos, row0, P, 1),
                       **{cache_arg: _prefix(stored, share.of_row[row0])}, use_cache=True, return_dict=True)
            last = last + 0.0 * out.last_hidden_state.sum()
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class's own setting
    rest_hidden = torch.cat(parts)
    if order != list(range(len(order))):  # back to the batch's row order
        rest_hidden = rest_hidden[torch.argsort(torch.tensor(order, device=last.device))]
    return torch.cat([last, rest_hidden], 1)


def sharing_supported(model: nn.Module, training: bool) -> bool:
    """Under gradient checkpointing in training, only where checkpointed layers can be told to keep a
    cache (`_can_checkpoint_with_cache`, recent transformers); older ones turn the KV cache off there."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.2x
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (checkpointing and training) or checkpointed_layers_keep_cache()


def checkpointed_layers_keep_cache() -> bool:
    """Whether this transformers lets a checkpointed layer keep a KV cache (`_can_checkpoint_with_cache`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")


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
