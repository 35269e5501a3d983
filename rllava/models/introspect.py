"""Find the parts of any HF model (vision tower, language decoder, LM head) without per-family code.

Works on plain `transformers` models, TinyLLaVA, and peft-wrapped models (whose module
names gain a `base_model.model.` prefix).
"""
from __future__ import annotations

from typing import Any

from torch import nn

# Attribute names HF VLMs (and TinyLLaVA) use for their vision encoder.
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder")


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a peft wrapper (adapters stay injected), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def vision_tower_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the outermost vision-encoder modules; empty for text-only models."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return found


def vision_tower_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the vision encoder (for Qwen-VL this includes its patch merger, as it lives inside `visual`)."""
    return [p for _, m in vision_tower_modules(model) for p in m.parameters()]


def is_vlm(model: nn.Module) -> bool:
    return bool(vision_tower_modules(model))


def decoder_module_name(model: nn.Module) -> str:
    """Dotted name of the language decoder inside `model` ("" if the model is the decoder)."""
    decoder = unwrap(model).get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ValueError(f"cannot locate the language decoder of {type(model).__name__}")


def get_tokenizer(processor: Any) -> Any:
    """The tokenizer inside a processor (a text-only model's processor is its tokenizer)."""
    return getattr(processor, "tokenizer", None) or processor


def pad_token_id(processor: Any) -> int:
    """Padding id: the tokenizer's pad token, else its EOS token."""
    tok = get_tokenizer(processor)
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pid is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has neither a pad nor an eos token")
    return int(pid)


def eos_token_ids(model: nn.Module, processor: Any) -> list[int]:
    """Every id that ends a response: the generation config's eos ids, then the tokenizer's eos."""
    gen = getattr(unwrap(model), "generation_config", None)
    ids = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    tok_eos = get_tokenizer(processor).eos_token_id
    if tok_eos is not None:
        ids.append(tok_eos)
    return list(dict.fromkeys(int(i) for i in ids))


def placeholder_token_ids(model: nn.Module, processor: Any) -> list[int]:
    """Ids the model must never generate: image/video placeholders (a sampled one would claim image features)."""
    cfg = unwrap(model).config
    ids = [getattr(cfg, k, None) for k in ("image_token_id", "video_token_id", "image_token_index", "video_token_index")]
    tok = get_tokenizer(processor)
    for attr in ("image_token", "video_token"):
        token = getattr(processor, attr, None) or getattr(tok, attr, None)
        if isinstance(token, str):
            ids.append(tok.convert_tokens_to_ids(token))
    return sorted({int(i) for i in ids if isinstance(i, int) and i >= 0 and i != tok.unk_token_id})
