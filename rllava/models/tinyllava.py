"""TinyLLaVA-style composition: a vision encoder + a connector + a causal LM, as one HF model.

`TinyLlavaConfig` holds a vision config (CLIP or SigLIP), a text config (Qwen2 / Qwen3 / any
decoder `AutoModel` builds) and the connector type. Importing this module registers
`model_type="tinyllava"` with `AutoConfig`, `AutoModelForImageTextToText` and `AutoProcessor`,
so a saved folder loads with `from_pretrained` once `rllava.models` is imported.

Each `<image>` in the text is expanded by the processor into one placeholder token per
vision patch; the model scatters the projected patch features into those positions.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# transformers 5.2x renamed the KV-cache output field from `past_key_values` to `cache`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# Leading non-patch tokens each vision encoder emits (CLIP prepends a CLS token, SigLIP none).
PREFIX_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}


def _sub_config(value: Any, default_type: str) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value or {})
    return AutoConfig.for_model(value.pop("model_type", default_type), **value)


class TinyLlavaConfig(PretrainedConfig):
    model_type = "tinyllava"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    connector_type: str = "mlp2x_gelu"  # a key of CONNECTORS
    image_token_id: int = 0
    vision_feature_layer: int = -2  # hidden state of the vision encoder the connector reads (LLaVA uses -2)
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _sub_config(self.vision_config, "siglip_vision_model")
        self.text_config = _sub_config(self.text_config, "qwen2")
        if self.connector_type not in CONNECTORS:
            raise ValueError(f"tinyllava connector_type={self.connector_type!r}; choose one of {sorted(CONNECTORS)}")
        super().__post_init__(**kwargs)

    @property
    def num_image_tokens(self) -> int:
        v = self.vision_config
        return (v.image_size // v.patch_size) ** 2


def _linear(v: int, t: int) -> nn.Module:
    return nn.Linear(v, t)


def _mlp2x_gelu(v: int, t: int) -> nn.Module:
    return nn.Sequential(nn.Linear(v, t), nn.GELU(), nn.Linear(t, t))


CONNECTORS = {"linear": _linear, "mlp2x_gelu": _mlp2x_gelu}


class TinyLlavaPreTrainedModel(PreTrainedModel):
    config_class = TinyLlavaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules: list[str] = []
    input_modalities = ("image", "text")


class TinyLlavaModel(TinyLlavaPreTrainedModel):
    """Vision tower + connector + language decoder; returns the decoder's hidden states."""

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.connector = CONNECTORS[config.connector_type](config.vision_config.hidden_size,
                                                           config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n_images, n_patches, text_hidden] connector outputs."""
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[self.config.vision_feature_layer]
        feats = feats[:, PREFIX_TOKENS.get(self.config.vision_config.model_type, 0):]
        return self.connector(feats)

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and input_ids is not None:
            mask = input_ids == self.config.image_token_id
            if mask.any():  # absent on decoding steps, where generate has dropped the image anyway
                feats = self.get_image_features(pixel_values.to(self.vision_tower.dtype))
                feats = feats.reshape(-1, feats.shape[-1]).to(inputs_embeds.dtype)
                if feats.shape[0] != int(mask.sum()):
                    raise ValueError(f"tinyllava: {int(mask.sum())} image tokens in input_ids but {feats.shape[0]} "
                                     f"image features ({pixel_values.shape[0]} images)")
                inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats)
        kwargs.pop("return_dict", None)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, return_dict=True, **kwargs)


class TinyLlavaForConditionalGeneration(TinyLlavaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.model = TinyLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                logits_to_keep: int = 0, **kwargs: Any) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                         position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      attentions=out.attentions, **{CACHE_FIELD: getattr(out, CACHE_FIELD, None)})


class TinyLlavaProcessor(ProcessorMixin):
    """Image processor + tokenizer; each `<image>` becomes `num_image_tokens` placeholder tokens."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None,
                 num_image_tokens: int = 16, image_token: str = "<image>", **kwargs):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images: Any = None, text: str | list[str] | None = None, return_tensors: str | None = None,
                 **kwargs: Any) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        flat = _flatten_images(images)
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        if n_placeholders != len(flat):
            raise ValueError(f"tinyllava processor: the text has {n_placeholders} {self.image_token} placeholders "
                             f"but {len(flat)} images were given")
        expanded = [t.replace(self.image_token, self.image_token * self.num_image_tokens) for t in texts]
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs)) if texts else {}
        if flat:
            data["pixel_values"] = self.image_processor(flat, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _flatten_images(images: Any) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in _flatten_images(item)]


AutoConfig.register("tinyllava", TinyLlavaConfig, exist_ok=True)
AutoModel.register(TinyLlavaConfig, TinyLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TinyLlavaConfig, TinyLlavaProcessor, exist_ok=True)
