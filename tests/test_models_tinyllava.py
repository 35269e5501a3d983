"""TinyLLaVA composition: config, save/load through the Auto classes, processor, generate, log-probs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from rllava.models.logprobs import response_logprobs
from rllava.models.tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration


def _clip_qwen3_config() -> TinyLlavaConfig:
    return TinyLlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="qwen3", vocab_size=96, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32),
        connector_type="linear", image_token_id=5, vision_feature_layer=-1)


def test_clip_linear_qwen3_composition_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    config = _clip_qwen3_config()
    assert config.num_image_tokens == 4  # 2x2 patches; CLIP's CLS token is dropped
    model = TinyLlavaForConditionalGeneration(config).eval()
    assert isinstance(model.model.connector, torch.nn.Linear)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "tinyllava"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is TinyLlavaForConditionalGeneration

    ids = torch.tensor([[7, 5, 5, 5, 5, 9, 10, 11, 12]])  # four image placeholders, then text
    pixels = torch.randn(1, 3, 28, 28)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    with torch.no_grad():
        a = model(**inputs).logits
        b = loaded(**inputs).logits
        logp, _ = response_logprobs(loaded, inputs, ids[:, -3:])
        no_image = loaded(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(a, b)
    ref = torch.log_softmax(b[:, -4:-1], -1).gather(-1, ids[:, -3:, None]).squeeze(-1)
    torch.testing.assert_close(logp, ref, atol=1e-6, rtol=0)
    assert (no_image - b).abs().max() > 1e-6  # the image features replaced the placeholder embeddings

    with pytest.raises(ValueError, match="image tokens"):
        loaded(input_ids=ids[:, :3], pixel_values=pixels)  # 2 placeholders for 4 patch features


def test_unknown_connector_is_rejected():
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        TinyLlavaConfig(connector_type="qformer")


def test_processor_expands_image_placeholder(tiny_model_factory):
    path = tiny_model_factory("tinyllava")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    img = Image.fromarray(np.zeros((40, 80, 3), dtype=np.uint8))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}],
        add_generation_prompt=True, tokenize=False)
    enc = processor(text=text, images=[img, img], return_tensors="pt")
    image_id = model.config.image_token_id
    assert processor.num_image_tokens == 16
    assert int((enc["input_ids"] == image_id).sum()) == 2 * 16
    assert tuple(enc["pixel_values"].shape) == (2, 3, 56, 56)  # resized to the vision tower's size
    out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        processor(text=text, images=[img])
