"""`rllava make-tiny-model`: write a complete random-weight HF model folder, offline.

The folder holds config, safetensors weights, tokenizer, processor, chat template and
generation config, and loads with plain `transformers` (`AutoProcessor`,
`AutoModelForImageTextToText` / `AutoModelForCausalLM`) as well as with rllava.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from rllava.models.chat_templates import chat_template
from rllava.models.tiny_families import FAMILIES, SIZES
from rllava.models.tokenizer import build_tokenizer
from rllava.registry import Registry

MODEL_FAMILIES = Registry("model_family", "families `rllava make-tiny-model --family` builds (HF model_type)")

VOCAB_MULTIPLE = 64  # embedding rows padded like real checkpoints (and friendlier to GPU kernels)


def tiny_config(family: str, size: str = "tiny", vocab: int = 0) -> tuple[PretrainedConfig, PreTrainedTokenizerFast]:
    """The config and tokenizer `make_tiny_model` would use (e.g. to count parameters on the meta device).

    `vocab` widens the embedding to a real model's vocabulary (its memory cost); ids past the tokenizer's
    own decode to nothing."""
    spec = FAMILIES[MODEL_FAMILIES.entry(family).name]  # unknown family: error naming the closest one
    if size not in SIZES:
        raise ValueError(f"unknown tiny-model size {size!r}; choose one of {sorted(SIZES)}")
    tok = build_tokenizer(spec.special, list(spec.extra_special), chat_template=chat_template(spec.style))
    vocab = max(vocab, -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    return spec.config(tok, SIZES[size], vocab), tok


def make_tiny_model(family: str, out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build family `family` at `size` ("tiny" ~1 M params, "small" ~31 M) with weights from `seed` into `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # before building: a large size takes a while
        raise NotADirectoryError(f"{out} is a file: give a folder to write the model into")
    model, processor = build_tiny_model(family, size, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_model(family: str, size: str = "tiny", seed: int = 0, vocab: int = 0) -> tuple[torch.nn.Module, object]:
    """(model, processor) as `make_tiny_model` writes them, in memory. The model is built on the
    current default device (e.g. under `with torch.device("cuda")`), which is fast for large sizes."""
    config, tok = tiny_config(family, size, vocab)
    spec = FAMILIES[family]
    auto = AutoModelForImageTextToText if spec.vision else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = auto.from_config(config)
        if spec.init is not None:
            spec.init(model)
    stop_ids = [tok.convert_tokens_to_ids(t) for t in spec.stop]
    model.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    processor = spec.processor(tok, tok.chat_template, SIZES[size])
    return model, processor


def _register_families() -> None:
    for name, spec in FAMILIES.items():
        MODEL_FAMILIES.register(name, description=spec.description, vision=spec.vision)(
            functools.partial(make_tiny_model, name))


_register_families()
