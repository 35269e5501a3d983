"""Chunked log-probs apply exactly the logit transform of the HF head's own forward (softcap, logit scaling).

Composite heads differ: some read the transform from their text config, others ignore the one it holds.
The reference is always the model's own `forward` logits, so these tests follow transformers' behaviour.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from rllava.models.logprobs import next_token_logprobs, response_logprobs

V = 128
TEXT = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=28, patch_size=14)
SIGLIP = dict(CLIP, model_type="siglip_vision_model")


# (name, builder, whether the head applies a transform). A cap of 0.05 or a scaling of 8 moves the log-probs far
# more than the tolerance, so applying a transform the head does not apply fails as surely as missing one.
MODELS = {
    # Applied from the text config: the top-level config has no such field.
    "paligemma_text_softcap": lambda: tf.PaliGemmaForConditionalGeneration(tf.PaliGemmaConfig(
        text_config=dict(TEXT, model_type="gemma2", head_dim=32, final_logit_softcapping=0.05),
        vision_config=SIGLIP, image_token_index=V - 1)),
    "granite_docling_text_scaling": lambda: tf.GraniteDoclingForConditionalGeneration(tf.GraniteDoclingConfig(
        text_config=dict(TEXT, logits_scaling=8.0), image_token_id=V - 1,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14, out_hidden_size=64))),
    # HyperCLOVAX multiplies by logits_scaling where Granite divides.
    "hyperclovax_multiplies": lambda: tf.HyperCLOVAXForCausalLM(tf.HyperCLOVAXConfig(**TEXT, logits_scaling=8.0)),
    # Held in the text config but not applied by these heads' forward.
    "gemma3_cg_ignores_text_softcap": lambda: tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
        text_config=dict(TEXT, head_dim=32, final_logit_softcapping=0.05, sliding_window=16),
        vision_config=SIGLIP, image_token_index=V - 1, mm_tokens_per_image=4)),
    "llava_ignores_granite_scaling": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(
        text_config=dict(TEXT, model_type="granite", logits_scaling=8.0), vision_config=CLIP,
        image_token_index=V - 1)),
    # Text LLMs: their own config.
    "granite_divides": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(**TEXT, logits_scaling=8.0)),
    "cohere2_logit_scale": lambda: tf.Cohere2ForCausalLM(tf.Cohere2Config(**TEXT, logit_scale=4.0, sliding_window=16)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_logprobs_equal_the_heads_own_logits(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ids = torch.randint(3, V - 1, (2, 9))  # text only: the transform sits after the LM head either way
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    responses = ids[:, -4:]
    with torch.no_grad():
        ref = torch.log_softmax(model(**inputs).logits.float(), -1)
        logp, _ = response_logprobs(model, inputs, responses, chunk_size=3)
        nxt = next_token_logprobs(model, inputs, [5, 7, 11])
    want = ref[:, -5:-1].gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(nxt, ref[:, -1, [5, 7, 11]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_non_positive_chunk_size_is_rejected(chunk_size):
    model = MODELS["granite_divides"]().eval()
    ids = torch.randint(3, V - 1, (1, 6))
    with pytest.raises(ValueError, match=rf"chunk_size must be >= 1 .*got {chunk_size}"):
        response_logprobs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids[:, -2:],
                          chunk_size=chunk_size)


def test_a_subclass_keeps_its_heads_transform():
    """FSDP2's fully_shard turns a module's class into a subclass named FSDP<name>: the head is still found."""
    torch.manual_seed(0)
    model = MODELS["granite_docling_text_scaling"]().eval()
    model.__class__ = type("FSDPGraniteDoclingForConditionalGeneration", (type(model),), {})
    ids = torch.randint(3, V - 1, (1, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        ref = torch.log_softmax(model(**inputs).logits[:, -4:-1].float(), -1)
        logp, _ = response_logprobs(model, inputs, ids[:, -3:])
    torch.testing.assert_close(logp, ref.gather(-1, ids[:, -3:, None]).squeeze(-1), atol=1e-5, rtol=0)
