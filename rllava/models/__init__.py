"""Models layer: loading HF models and processors, tiny offline models, TinyLLaVA, LoRA, log-probs."""
from rllava.models import tinyllava  # noqa: F401  (registers model_type "tinyllava" with the Auto classes)
from rllava.models.introspect import eos_token_ids, get_tokenizer, is_vlm, pad_token_id, vision_tower_params
from rllava.models.load import load_model_and_processor
from rllava.models.logprobs import response_logprobs
from rllava.models.tiny import MODEL_FAMILIES, make_tiny_model

__all__ = [
    "MODEL_FAMILIES",
    "eos_token_ids",
    "get_tokenizer",
    "is_vlm",
    "load_model_and_processor",
    "make_tiny_model",
    "pad_token_id",
    "response_logprobs",
    "vision_tower_params",
]
