"""Token log-probs and entropy of response tokens without [B, T, V] float32 logits.

The base model runs once and returns only its last hidden states. The LM head is then
applied to the response-predicting positions in chunks of `chunk_size` rows, and each
chunk's log-softmax and entropy are computed in fp32. Under autograd each chunk is
checkpointed, so its logits are recomputed in backward instead of being kept alive:
extra memory is a few [chunk_size, V] fp32 blocks at a time, forward and backward.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rllava.data.types import PromptShare
from rllava.models.introspect import unwrap
from rllava.models.shared_prompt import shared_prompt_hidden_states

# Image-text heads that apply their text config's logit transform (transformers 5.x forwards). Every other
# composite head applies none even where its text config holds one (Gemma3ForConditionalGeneration with Gemma3's
# softcap, LLaVA(-NeXT) with Granite's logits_scaling, AyaVision with Cohere's logit_scale), so for those the
# composite config is read, and it holds none of these fields.
_TEXT_CONFIG_HEADS = frozenset({
    "PaliGemmaForConditionalGeneration", "Gemma3nForConditionalGeneration", "Gemma4ForConditionalGeneration",
    "Gemma4UnifiedForConditionalGeneration", "Granite4VisionForConditionalGeneration",
    "GraniteDoclingForConditionalGeneration", "CohereCompassForConditionalGeneration",
    "HyperCLOVAXVisionV2ForConditionalGeneration", "Inkling2ForConditionalGeneration",
    "Inkling2LoopForConditionalGeneration", "MistralLarge4ForConditionalGeneration",
    "MuseGlimmerForConditionalGeneration", "MuseSparkForConditionalGeneration",
})
# HyperCLOVAX multiplies by logits_scaling where Granite (and MiniCPM3, on the hidden states) divides.
_MULTIPLY_LOGITS_SCALING = frozenset({"HyperCLOVAXForCausalLM", "HyperCLOVAXVisionV2ForConditionalGeneration"})
_UNAPPLIED = {"MptForCausalLM": {"logit_scale"}}  # config fields a head leaves unused


def _logit_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The HF head's own post-LM-head logit transform (identity for most): the fields its forward reads, from
    the config it reads them from (see `_TEXT_CONFIG_HEADS`)."""
    # The class and its bases: FSDP2's fully_shard swaps the class for a subclass named FSDP<name>.
    names = {c.__name__ for c in type(model).__mro__}
    cfg = model.config.get_text_config() if names & _TEXT_CONFIG_HEADS else model.config
    unapplied = set().union(*(_UNAPPLIED.get(n, set()) for n in names))

    def field(key: str) -> float | None:
        return None if key in unapplied else getattr(cfg, key, None)

    scale = 1.0
    # Cohere: logit_scale; Falcon-H1: lm_head_multiplier; MuseGlimmer/Spark: output_multiplier (before the cap).
    for key in ("logit_scale", "lm_head_multiplier", "output_multiplier"):
        if field(key) is not None:
            scale *= field(key)
    scaling = field("logits_scaling")
    if scaling is not None:
        scale = scale * scaling if names & _MULTIPLY_LOGITS_SCALING else scale / scaling
    cap = field("final_logit_softcapping")  # Gemma2/3/3n/4 and others: cap * tanh(logits / cap)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale != 1.0:
            logits = logits * scale
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


def last_hidden_states(model: nn.Module, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, L, H] final-layer hidden states from the model's base module (no LM head, no KV cache)."""
    hf = unwrap(model)
    base = hf.base_model
    if base is hf:
        raise ValueError(f"{type(hf).__name__} has no base module (base_model_prefix={hf.base_model_prefix!r})")
    inputs = dict(model_inputs)
    # Left padding: text decoders need positions that start at each row's first real token, as in
    # `generate`. M-RoPE models (they have get_rope_index) derive their positions from the mask themselves.
    if "position_ids" not in inputs and "attention_mask" in inputs and not hasattr(base, "get_rope_index"):
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    out = base(**inputs, use_cache=False, return_dict=True)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def response_hidden_states(model: nn.Module, model_inputs: dict[str, torch.Tensor], response_width: int,
                           share: PromptShare | None = None) -> torch.Tensor:
    """[B, T, H]: the final hidden state at each position that predicts a response token.

    With `share`, each distinct prompt runs once and its samples' responses run on its KV cache;
    `model_inputs` then carries no images (see `rllava.models.shared_prompt`).
    """
    L, T = model_inputs["input_ids"].shape[1], response_width
    if share is not None:
        return shared_prompt_hidden_states(unwrap(model).base_model, model_inputs, share, T)
    mask = model_inputs.get("attention_mask")
    if mask is None or bool(mask.all()):
        return last_hidden_states(model, model_inputs)[:, L - T - 1: L - 1]
    # [left-padded prompt | right-padded response] pads each row to the longest prompt plus the longest
    # response; packed to the right, a row is padded only to the longest whole sequence.
    packed, column = pack_right(model_inputs)
    hidden = last_hidden_states(model, packed)
    real = mask[:, L - T:].bool()
    at = (column[:, L - T:] - 1).clamp(min=0).masked_fill(~real, 0)  # the position before each response token
    out = hidden.gather(1, at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return out.masked_fill_(~real.unsqueeze(-1), 0.0)  # in place: gather's backward does not keep its output


def pack_right(model_inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every row's real tokens (attention mask 1) moved, in order, to the right end of a row as wide as the
    longest row's; and each old column's new one (meaningful where the mask is 1). Per-token tensors (integer
    [B, L]: ids, masks, token types) move with the ids (padding reads 0); the rest (images, grids) stay as they
    are: they follow the tokens' order."""
    mask = model_inputs["attention_mask"].bool()
    B, L = mask.shape
    lengths = mask.sum(1)
    width = int(lengths.max())
    column = (width - lengths).unsqueeze(1) + mask.long().cumsum(1) - 1
    rows = torch.arange(B, device=mask.device).unsqueeze(1).expand(B, L)[mask]
    cols = column[mask]
    packed = {}
    for k, v in model_inputs.items():
        # Per-token tensors are ids and masks: integer [B, L]. (Pixels are float; grids and sizes are [images, 2|3].)
        if v.shape == (B, L) and not v.is_floating_point():
            out = v.new_zeros(B, width)
            out[rows, cols] = v[mask]
            packed[k] = out
        else:
            packed[k] = v
    return packed, column


def _chunk_stats(head: nn.Module, transform: Callable, temperature: float, with_entropy: bool,
                 hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = transform(head(hidden).float()) / temperature
    logz = torch.logsumexp(logits, -1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    probs = torch.softmax(logits, -1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


def response_logprobs(model: nn.Module, model_inputs: dict[str, torch.Tensor], responses: torch.Tensor,
                      temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False,
                      share: PromptShare | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] (fp32) of `responses` and, if asked, the policy entropy [B, T] at each response position.

    `model_inputs` holds sequences of width L = P + T laid out as [left-padded prompt | right-padded response],
    plus any per-token extras and image tensors the model's forward takes. Padded response positions (attention
    mask 0) read 0 in both outputs. Logits are divided by `temperature`, matching sampling at that temperature.
    `share`: run each distinct prompt once (see `response_hidden_states`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if chunk_size < 1:  # range(0, n, 0) would raise an opaque error; a negative step would skip every token
        raise ValueError(f"chunk_size must be >= 1 (LM-head rows per chunk), got {chunk_size}")
    B, T = responses.shape
    L = model_inputs["input_ids"].shape[1]
    if L <= T:
        raise ValueError(f"input_ids width {L} must exceed the response width {T} (prompt + response)")
    hf = unwrap(model)
    head = hf.get_output_embeddings()
    transform = _logit_transform(hf)
    if T == 0:  # no response token: [B, 0], still through the model and its head, as other micro-batches (and
        # ranks) run them, so that a loss built on it has a graph (and FSDP issues the same collectives)
        empty = head(last_hidden_states(model, model_inputs)[:, :0]).float().sum(-1)
        return empty, (empty.clone() if with_entropy else None)
    hidden = response_hidden_states(model, model_inputs, T, share)
    # The LM head (a large share of the compute with a big vocabulary) runs on real response tokens only.
    real = model_inputs["attention_mask"][:, L - T:] if "attention_mask" in model_inputs else torch.ones_like(responses)
    at = real.reshape(B * T).nonzero().squeeze(1)
    flat_h = hidden.reshape(B * T, hidden.shape[-1])[at]
    flat_t = responses.reshape(B * T).to(at.device)[at]
    use_ckpt = torch.is_grad_enabled() and flat_h.requires_grad
    logps, ents = [], []
    for start in range(0, len(at), chunk_size):
        args = (head, transform, temperature, with_entropy, flat_h[start:start + chunk_size],
                flat_t[start:start + chunk_size])
        lp, h = checkpoint(_chunk_stats, *args, use_reentrant=False) if use_ckpt else _chunk_stats(*args)
        logps.append(lp)
        ents.append(h)
    zeros = flat_h.new_zeros(B * T, dtype=torch.float32)
    logp = zeros.index_copy(0, at, torch.cat(logps)).view(B, T) if logps else zeros.view(B, T)
    entropy = None
    if with_entropy:
        entropy = zeros.index_copy(0, at, torch.cat(ents)).view(B, T) if ents else zeros.view(B, T)
    return logp, entropy


@torch.no_grad()
def next_token_logprobs(model: nn.Module, model_inputs: dict[str, torch.Tensor], token_ids: list[int]) -> torch.Tensor:
    """[B, K] fp32 log-probs of `token_ids` as the next token after each left-padded row: the LM head runs on
    the last position only."""
    hf = unwrap(model)
    last = last_hidden_states(model, model_inputs)[:, -1]
    logits = _logit_transform(hf)(hf.get_output_embeddings()(last).float())
    return torch.log_softmax(logits, -1)[:, token_ids]
