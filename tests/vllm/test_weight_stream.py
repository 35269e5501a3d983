"""The vLLM engine's parts that need no vLLM: registration, the weight stream (LoRA merged), request building.

These run in the main venv too (vLLM itself is imported only when an engine is built).
"""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from rllava.config import ModelConfig
from rllava.data.types import Prompt
from rllava.engines import ROLLOUT_ENGINES
from rllava.engines.vllm_rollout import VLLMRolloutEngine
from rllava.models.load import load_model
from rllava.models.weights import hf_weights


def _vllm_installed() -> bool:
    # Under pytest this very folder (tests/vllm, no __init__.py) is an importable namespace package
    # named "vllm"; the real one is a regular package with an __init__ file.
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


@pytest.fixture(scope="module")
def tiny_path(tiny_model_factory):
    return tiny_model_factory("qwen2")


def test_registered_without_building_vllm():
    entry = ROLLOUT_ENGINES.entry("vllm")
    assert entry.fn is VLLMRolloutEngine
    assert "vLLM" in entry.description


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="HF model folder.*nowhere"):
        VLLMRolloutEngine(torch.nn.Linear(2, 2), pad_id=0, eos_ids=[1], model_path=str(tmp_path / "nowhere"))


@pytest.mark.skipif(_vllm_installed(), reason="vllm is installed here")
def test_without_vllm_building_says_how_to_install(tiny_path):
    with pytest.raises(ImportError, match=r"rllava\[vllm\].*docs/vllm.md"):
        VLLMRolloutEngine(torch.nn.Linear(2, 2), pad_id=0, eos_ids=[1], model_path=str(tiny_path))


def test_plain_model_streams_its_own_parameters(tiny_path):
    model = load_model(ModelConfig(path=str(tiny_path)))
    streamed = list(hf_weights(model))
    params = dict(model.named_parameters())
    assert [n for n, _ in streamed] == list(params)  # names and order as the module has them (tied weights once)
    assert all(t.data_ptr() == params[n].data_ptr() for n, t in streamed)  # the parameters themselves, no copies
    assert len({n for n, _ in streamed}) == len(streamed)


def test_lora_is_merged_on_the_fly(tiny_path):
    peft_model = load_model(ModelConfig(path=str(tiny_path), lora_rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the adapter change the weights
                p.normal_(0.0, 0.1)
    streamed = dict(hf_weights(peft_model))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    expected = dict(merged.named_parameters())
    assert set(streamed) == set(expected)
    assert not any("lora_" in n or "base_layer" in n for n in streamed)
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    # Hand check on one projection: W + B @ A * alpha / r.
    layer = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    hand = layer.base_layer.weight + b @ a * (8 / 4)
    torch.testing.assert_close(streamed["model.layers.0.self_attn.q_proj.weight"], hand, rtol=0, atol=1e-6)
    assert not torch.allclose(hand, layer.base_layer.weight)


def test_disabled_adapter_streams_base_weights(tiny_path):
    peft_model = load_model(ModelConfig(path=str(tiny_path), lora_rank=4))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    with peft_model.disable_adapter():
        streamed = dict(hf_weights(peft_model))
    base = peft_model.get_base_model().model.layers[1].mlp.up_proj.base_layer.weight
    assert torch.equal(streamed["model.layers.1.mlp.up_proj.weight"], base)


def test_requests_text_ids_or_chat_text_with_images():
    from PIL import Image

    text_only = Prompt(input_ids=[3, 4, 5], text="hi")
    assert VLLMRolloutEngine._request(text_only) == {"prompt_token_ids": [3, 4, 5]}
    img = Image.new("RGB", (32, 32))
    vlm = Prompt(input_ids=[3, 9, 9, 9, 5], mm={"pixel_values": torch.zeros(4, 8)}, text="<image>hi", images=[img])
    req = VLLMRolloutEngine._request(vlm)
    assert req == {"prompt": "<image>hi", "multi_modal_data": {"image": [img]}}  # vLLM expands the placeholder


@pytest.mark.parametrize("prompt, message", [
    (Prompt(input_ids=[1, 2], mm={"pixel_values_videos": torch.zeros(1)}, text="v", images=[], index=7),
     "prompt 7: video inputs"),
    (Prompt(input_ids=[1, 2], mm={"pixel_values": torch.zeros(1)}, text="t", images=[], index=3),
     "prompt 3 has image inputs but no raw images"),
])
def test_unsupported_multimodal_prompts_are_named(prompt, message):
    with pytest.raises(NotImplementedError, match=message):
        VLLMRolloutEngine._request(prompt)
