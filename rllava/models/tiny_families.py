"""The table of tiny model families: config, processor and init recipe per HF model_type.

Every builder takes the family's tokenizer and a `Size` and returns plain `transformers`
objects, so the saved folder loads with `AutoConfig` / `AutoProcessor` / `AutoModel*`.
Sub-configs are passed as dicts with a `model_type`, which every transformers 5.x accepts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast

PIXELS_MIN = 64 * 64  # Qwen-style processors: images from ~64x64 ...
PIXELS_MAX = 448 * 448  # ... to ~448x448 keep their resolution (a token per 28 or 32 px square)


@dataclass(frozen=True)
class Size:
    """Widths and depths of the language model (first five) and the vision tower (v_*)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    v_hidden: int
    v_layers: int
    v_heads: int
    v_intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES: dict[str, Size] = {
    # ~1 M params: fast tests. Head dims stay 32 (language and vision) so vLLM could load them.
    "tiny": Size(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=512,
                 v_hidden=64, v_layers=2, v_heads=2, v_intermediate=256),
    # ~31 M params for Qwen2-VL: benchmarks.
    "small": Size(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536,
                  v_hidden=256, v_layers=5, v_heads=4, v_intermediate=1024),
    # The shape of Qwen2-VL-2B (~2.2 B params with a 1k vocabulary): GPU benchmarks only.
    "2b": Size(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960,
               v_hidden=1280, v_layers=32, v_heads=16, v_intermediate=5120),
    # The shape of Qwen2.5-VL-3B (~4.1 B params untied at its 151,936 vocabulary): the 24 GB memory benchmark.
    "4b": Size(hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008,
               v_hidden=1280, v_layers=32, v_heads=16, v_intermediate=3420),
    # The shape of Qwen2.5-VL-7B (~8.3 B params at its 152,064 vocabulary, untied): the 7 B memory check.
    "7b": Size(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944,
               v_hidden=1280, v_layers=32, v_heads=16, v_intermediate=3420),
}


@dataclass(frozen=True)
class FamilySpec:
    """How to build one family. `special` maps tokenizer roles to tokens; `stop` ends an assistant turn."""

    description: str
    style: str  # a key of chat_templates.STYLES
    special: dict[str, str]
    config: Callable[[PreTrainedTokenizerFast, Size, int], PretrainedConfig]  # (tokenizer, size, vocab) -> config
    processor: Callable[[PreTrainedTokenizerFast, str, Size], Any]  # (tokenizer, chat template, size) -> processor
    stop: tuple[str, ...]
    extra_special: tuple[str, ...] = ()
    vision: bool = True
    init: Callable[[torch.nn.Module], None] | None = None  # fix-ups after random init


def text_kwargs(tok: PreTrainedTokenizerFast, s: Size, vocab: int, **extra: Any) -> dict[str, Any]:
    """Language-model fields shared by every family."""
    return dict(vocab_size=vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
                num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dim; must sum to head_dim // 2 (Qwen uses 1/4, 3/8, 3/8)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


# ------------------------------------------------------------------ Qwen-VL family

QWEN_VL_SPECIAL = {
    "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
}
QWEN_EXTRA = ("<|im_start|>",)
QWEN_STOP = ("<|im_end|>", "<|endoftext|>")


def _qwen_vl_tokens(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                vision_start_token_id=tok.vision_start_token_id, vision_end_token_id=tok.vision_end_token_id)


def _qwen2_vl_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import Qwen2VLConfig

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(s.head_dim)}
    return Qwen2VLConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="qwen2_vl_text", rope_parameters=rope),
        vision_config=dict(model_type="qwen2_vl_vision", depth=s.v_layers, embed_dim=s.v_hidden, hidden_size=s.hidden,
                           num_heads=s.v_heads, mlp_ratio=s.v_intermediate // s.v_hidden),
        **_qwen_vl_tokens(tok))


def _qwen2_5_vl_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(s.head_dim)}
    return Qwen2_5_VLConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="qwen2_5_vl_text", rope_parameters=rope),
        # Window attention in every block but the last, as in the real model.
        vision_config=dict(model_type="qwen2_5_vl_vision", depth=s.v_layers, hidden_size=s.v_hidden,
                           intermediate_size=s.v_intermediate, num_heads=s.v_heads, out_hidden_size=s.hidden,
                           window_size=112, fullatt_block_indexes=[s.v_layers - 1]),
        **_qwen_vl_tokens(tok))


def _qwen3_vl_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": _mrope_section(s.head_dim),
            "mrope_interleaved": True}
    return Qwen3VLConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="qwen3_vl_text", head_dim=s.head_dim, rope_parameters=rope),
        # num_position_embeddings must be a square (a 2-D grid of learned positions, interpolated per image).
        vision_config=dict(model_type="qwen3_vl_vision", depth=s.v_layers, hidden_size=s.v_hidden,
                           intermediate_size=s.v_intermediate, num_heads=s.v_heads, out_hidden_size=s.hidden,
                           num_position_embeddings=16 * 16, deepstack_visual_indexes=[0]),
        **_qwen_vl_tokens(tok))


def _qwen_vl_processor(processor_cls: str, video_cls: str, patch: int) -> Callable:
    def build(tok, template: str, s: Size):
        import transformers
        from transformers import Qwen2VLImageProcessor

        kw = dict(min_pixels=PIXELS_MIN, max_pixels=PIXELS_MAX, patch_size=patch, merge_size=2, temporal_patch_size=2)
        image = Qwen2VLImageProcessor(**kw)
        # cap_pixels_per_frame: the per-frame budget of the reference qwen-vl-utils (and no warning on every call).
        video = getattr(transformers, video_cls)(**kw, cap_pixels_per_frame=True)
        return getattr(transformers, processor_cls)(image_processor=image, tokenizer=tok, video_processor=video,
                                                    chat_template=template)

    return build


# ------------------------------------------------------------------ LLaVA

LLAVA_IMAGE, LLAVA_PATCH = 56, 14  # 4x4 patches (+ CLS, dropped by the "default" strategy) = 16 image tokens


def _llava_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="llama", head_dim=s.head_dim),
        vision_config=dict(model_type="clip_vision_model", hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                           num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads, image_size=LLAVA_IMAGE,
                           patch_size=LLAVA_PATCH, projection_dim=s.v_hidden),
        image_token_index=tok.image_token_id, image_seq_length=(LLAVA_IMAGE // LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-1)


def _llava_processor(tok, template: str, s: Size):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image = CLIPImageProcessor(size={"shortest_edge": LLAVA_IMAGE}, crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE})
    # These three must agree with the vision config, or the count of <image> tokens is wrong.
    return LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=LLAVA_PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template, image_token=tok.image_token)


# ------------------------------------------------------------------ Idefics3 / SmolVLM

IDEFICS_TILE, IDEFICS_PATCH, IDEFICS_SCALE = 64, 16, 2  # a 64 px tile: 4x4 patches, pixel-shuffled to 2x2 = 4 tokens
IDEFICS_SEQ = (IDEFICS_TILE // IDEFICS_PATCH) ** 2 // IDEFICS_SCALE ** 2
IDEFICS_ROW_COL = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
IDEFICS_SPECIAL = {"eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>", "image_token": "<image>",
                   "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                   "end_of_utterance_token": "<end_of_utterance>"}


def _idefics_config(config_name: str, vision_type: str) -> Callable:
    def build(tok, s: Size, vocab: int) -> PretrainedConfig:
        import transformers

        return getattr(transformers, config_name)(
            text_config=text_kwargs(tok, s, vocab, model_type="llama", head_dim=s.head_dim),
            vision_config=dict(model_type=vision_type, hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                               num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads, image_size=IDEFICS_TILE,
                               patch_size=IDEFICS_PATCH),
            scale_factor=IDEFICS_SCALE, image_token_id=tok.image_token_id, pad_token_id=tok.pad_token_id)

    return build


def _idefics_image_kwargs() -> dict[str, Any]:
    # Images are resized to a 128 px longest edge and split into up to 2x2 tiles of 64 px plus a global view.
    return dict(size={"longest_edge": 2 * IDEFICS_TILE}, max_image_size={"longest_edge": IDEFICS_TILE})


def _idefics3_processor(tok, template: str, s: Size):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    return Idefics3Processor(image_processor=Idefics3ImageProcessor(**_idefics_image_kwargs()), tokenizer=tok,
                             image_seq_len=IDEFICS_SEQ, chat_template=template)


def _smolvlm_processor(tok, template: str, s: Size):
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    kw = _idefics_image_kwargs()
    return SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**kw), tokenizer=tok,
                            video_processor=SmolVLMVideoProcessor(**kw), image_seq_len=IDEFICS_SEQ,
                            chat_template=template)


# ------------------------------------------------------------------ Gemma3

GEMMA_IMAGE, GEMMA_PATCH, GEMMA_TOKENS = 64, 16, 4  # 4x4 patches average-pooled to 2x2 = 4 soft tokens
GEMMA_SPECIAL = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "image_token": "<image_soft_token>",
                 "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}


def _gemma3_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import Gemma3Config

    text = text_kwargs(tok, s, vocab, model_type="gemma3_text", head_dim=s.head_dim, query_pre_attn_scalar=s.head_dim,
                       sliding_window=64)
    text["layer_types"] = ["sliding_attention"] * (s.layers - 1) + ["full_attention"]
    return Gemma3Config(
        text_config=text,
        vision_config=dict(model_type="siglip_vision_model", hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                           num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads, image_size=GEMMA_IMAGE,
                           patch_size=GEMMA_PATCH, vision_use_head=False),
        mm_tokens_per_image=GEMMA_TOKENS, boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id)


def _gemma3_processor(tok, template: str, s: Size):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    image = Gemma3ImageProcessor(size={"height": GEMMA_IMAGE, "width": GEMMA_IMAGE})
    return Gemma3Processor(image_processor=image, tokenizer=tok, image_seq_length=GEMMA_TOKENS, chat_template=template)


def _gemma3_init(model: torch.nn.Module) -> None:
    """Gemma3's multimodal projection is all zeros after random init, which would make the image invisible."""
    for name, p in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):
            with torch.no_grad():
                p.normal_(0.0, 0.02)


# ------------------------------------------------------------------ InternVL (the -hf checkpoints: InternVL3 and later)

INTERNVL_TILE, INTERNVL_PATCH = 56, 14  # a 56 px tile: 4x4 patches, pixel-shuffled (ratio 0.5) to 2x2 = 4 tokens
INTERNVL_SEQ = (INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4
INTERNVL_SPECIAL = {**{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "start_image_token": "<img>",
                    "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def _internvl_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import InternVLConfig

    return InternVLConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="qwen2"),
        vision_config=dict(model_type="internvl_vision", hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                           num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads,
                           image_size=[INTERNVL_TILE] * 2, patch_size=[INTERNVL_PATCH] * 2),
        image_token_id=tok.context_image_token_id, image_seq_length=INTERNVL_SEQ, downsample_ratio=0.5)


def _internvl_processor(tok, template: str, s: Size):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    # As the real processor: an image is cut into up to 4 tiles by its aspect ratio, plus a thumbnail.
    image = GotOcr2ImageProcessor(size=tile, crop_to_patches=True, min_patches=1, max_patches=4)
    return InternVLProcessor(image_processor=image, tokenizer=tok, video_processor=InternVLVideoProcessor(size=tile),
                             image_seq_length=INTERNVL_SEQ, chat_template=template)


# ------------------------------------------------------------------ LLaVA-OneVision

ONEVISION_CROP, ONEVISION_PATCH = 28, 14  # a 28 px crop: 2x2 patches = 4 tokens
ONEVISION_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]  # the anyres grids a single image is cut to
ONEVISION_SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<image>",
                     "video_token": "<video>"}


def _onevision_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config=text_kwargs(tok, s, vocab, model_type="qwen2"),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                           num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads, image_size=ONEVISION_CROP,
                           patch_size=ONEVISION_PATCH, vision_use_head=False),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
        image_grid_pinpoints=ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_9")


def _onevision_processor(tok, template: str, s: Size):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    crop = {"height": ONEVISION_CROP, "width": ONEVISION_CROP}
    image = LlavaOnevisionImageProcessor(size=crop, image_grid_pinpoints=ONEVISION_PINPOINTS)
    return LlavaOnevisionProcessor(image_processor=image, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=crop),
                                   num_image_tokens=(ONEVISION_CROP // ONEVISION_PATCH) ** 2,
                                   vision_feature_select_strategy="full", chat_template=template,
                                   vision_aspect_ratio="anyres_max_9")


# ------------------------------------------------------------------ TinyLLaVA (rllava's own composition)

TINYLLAVA_IMAGE, TINYLLAVA_PATCH = 56, 14  # SigLIP, no CLS: 4x4 = 16 image tokens


def _tinyllava_config(tok, s: Size, vocab: int) -> PretrainedConfig:
    from rllava.models.tinyllava import TinyLlavaConfig

    return TinyLlavaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=s.v_hidden, intermediate_size=s.v_intermediate,
                           num_hidden_layers=s.v_layers, num_attention_heads=s.v_heads, image_size=TINYLLAVA_IMAGE,
                           patch_size=TINYLLAVA_PATCH, vision_use_head=False),
        text_config=text_kwargs(tok, s, vocab, model_type="qwen2"),
        connector_type="mlp2x_gelu", image_token_id=tok.image_token_id)


def _tinyllava_processor(tok, template: str, s: Size):
    from transformers import SiglipImageProcessor

    from rllava.models.tinyllava import TinyLlavaProcessor

    image = SiglipImageProcessor(size={"height": TINYLLAVA_IMAGE, "width": TINYLLAVA_IMAGE})
    return TinyLlavaProcessor(image_processor=image, tokenizer=tok, chat_template=template,
                              num_image_tokens=(TINYLLAVA_IMAGE // TINYLLAVA_PATCH) ** 2, image_token=tok.image_token)


# ------------------------------------------------------------------ text-only


def _text_config(config_name: str, set_head_dim: bool = False) -> Callable:
    def build(tok, s: Size, vocab: int) -> PretrainedConfig:
        import transformers

        extra = {"head_dim": s.head_dim} if set_head_dim else {}  # Qwen3 defaults to 128 otherwise
        return getattr(transformers, config_name)(**text_kwargs(tok, s, vocab, **extra), tie_word_embeddings=True)

    return build


def _tokenizer_only(tok, template: str, s: Size):
    return tok


TEXT_SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

FAMILIES: dict[str, FamilySpec] = {
    "qwen2_vl": FamilySpec("Qwen2-VL: ViT with 2-D RoPE + 2x2 patch merger, Qwen2 LM with M-RoPE", "qwen_vl",
                           QWEN_VL_SPECIAL, _qwen2_vl_config,
                           _qwen_vl_processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor", 14), QWEN_STOP, QWEN_EXTRA),
    "qwen2_5_vl": FamilySpec("Qwen2.5-VL: windowed-attention ViT, SwiGLU, Qwen2 LM with M-RoPE", "qwen_vl",
                             QWEN_VL_SPECIAL, _qwen2_5_vl_config,
                             _qwen_vl_processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14), QWEN_STOP,
                             QWEN_EXTRA),
    "qwen3_vl": FamilySpec("Qwen3-VL: ViT with DeepStack features, Qwen3 LM with interleaved M-RoPE", "qwen_vl",
                           QWEN_VL_SPECIAL, _qwen3_vl_config,
                           _qwen_vl_processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16), QWEN_STOP, QWEN_EXTRA),
    "llava": FamilySpec("LLaVA-1.5: CLIP ViT + 2-layer MLP projector + Llama LM", "llava",
                        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "image_token": "<image>"},
                        _llava_config, _llava_processor, ("</s>",)),
    "idefics3": FamilySpec("Idefics3: SigLIP tiles + pixel-shuffle connector + Llama LM", "idefics3",
                           {"bos_token": "<|begin_of_text|>", **IDEFICS_SPECIAL},
                           _idefics_config("Idefics3Config", "idefics3_vision"), _idefics3_processor,
                           ("<end_of_utterance>",), IDEFICS_ROW_COL),
    "smolvlm": FamilySpec("SmolVLM: Idefics3-style tiles + pixel shuffle, small Llama LM, video", "smolvlm",
                          {"bos_token": "<|im_start|>", **IDEFICS_SPECIAL},
                          _idefics_config("SmolVLMConfig", "smolvlm_vision"), _smolvlm_processor,
                          ("<end_of_utterance>",), IDEFICS_ROW_COL),
    "gemma3": FamilySpec("Gemma3: SigLIP + pooled soft tokens + Gemma3 LM with sliding-window layers", "gemma3",
                         GEMMA_SPECIAL, _gemma3_config, _gemma3_processor, ("<end_of_turn>", "<eos>"),
                         ("<start_of_turn>", "<end_of_turn>"), init=_gemma3_init),
    "internvl": FamilySpec("InternVL: InternViT tiles + pixel-shuffle MLP projector + Qwen2 LM", "internvl",
                           INTERNVL_SPECIAL, _internvl_config, _internvl_processor, QWEN_STOP, QWEN_EXTRA),
    "llava_onevision": FamilySpec("LLaVA-OneVision: SigLIP with anyres crops + MLP projector + Qwen2 LM", "chatml_image",
                                  ONEVISION_SPECIAL, _onevision_config, _onevision_processor, QWEN_STOP, QWEN_EXTRA),
    "tinyllava": FamilySpec("TinyLLaVA-style: SigLIP + 2-layer GELU MLP connector + Qwen2 LM (rllava composition)",
                            "chatml_image", {**TEXT_SPECIAL, "image_token": "<image>"}, _tinyllava_config,
                            _tinyllava_processor, QWEN_STOP, QWEN_EXTRA),
    "qwen2": FamilySpec("Qwen2 text-only causal LM", "chatml_text", TEXT_SPECIAL, _text_config("Qwen2Config"),
                        _tokenizer_only, QWEN_STOP, QWEN_EXTRA, vision=False),
    "qwen3": FamilySpec("Qwen3 text-only causal LM (q/k norm)", "chatml_text", TEXT_SPECIAL,
                        _text_config("Qwen3Config", set_head_dim=True), _tokenizer_only, QWEN_STOP,
                        QWEN_EXTRA, vision=False),
}

