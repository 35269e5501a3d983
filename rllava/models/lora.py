"""LoRA adapters (peft) on the language model's linear layers; the vision tower is left alone.

`disable_adapter()` on the returned model gives the base weights, which is how the
reference policy is computed without a second copy of the model.
"""
from __future__ import annotations

import re

from torch import nn

from rllava.config import ConfigError, ModelConfig
from rllava.models.introspect import decoder_module_name


def language_lora_targets(model: nn.Module, targets: str = "all-linear") -> str:
    """A peft `target_modules` regex matching linear layers inside the language decoder only.

    `targets` is "all-linear" or comma-separated leaf names such as "q_proj,v_proj".
    """
    prefix = decoder_module_name(model)
    wanted = None if targets.strip() == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
    linear = set()  # leaf names of the decoder's linear layers
    for name, module in model.named_modules():
        inside = name.startswith(prefix + ".") if prefix else True
        if inside and isinstance(module, nn.Linear):
            linear.add(name.rsplit(".", 1)[-1])
    leaves = linear if wanted is None else linear & wanted
    # One misspelt name among good ones would otherwise just leave that layer without an adapter.
    unknown = sorted(wanted - linear) if wanted is not None else []
    if not leaves or unknown:
        scope = prefix or type(model).__name__
        what = f"no linear layer of the language decoder ({scope}) is named {' or '.join(unknown)}" if unknown \
            else f"matches no linear layer of the language decoder ({scope})"
        raise ConfigError(f"model.lora_target_modules={targets!r}: {what}; its linear layers are "
                          f"{', '.join(sorted(linear)) or 'none'} (or use all-linear)")
    scope = re.escape(prefix) + r"\.(.*\.)?" if prefix else r"(.*\.)?"
    return scope + "(" + "|".join(sorted(map(re.escape, leaves))) + ")"


def apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters of rank `cfg.lora_rank`; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=language_lora_targets(model, cfg.lora_target_modules), bias="none")
    return get_peft_model(model, lora)
