"""Every tiny model family end to end: plain-transformers load, generate, chunked log-probs, batching, backward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from rllava.config import ModelConfig
from rllava.data.types import Batch, Episode, Prompt
from rllava.models import tinyllava  # noqa: F401  (registers "tinyllava" with the Auto classes)
from rllava.models.introspect import placeholder_token_ids
from rllava.models.load import (
    eos_token_ids,
    get_tokenizer,
    is_vlm,
    load_model_and_processor,
    pad_token_id,
    vision_tower_params,
)
from rllava.models.logprobs import response_logprobs
from rllava.models.tiny_families import FAMILIES

VLM_FAMILIES = [f for f, s in FAMILIES.items() if s.vision]
ALL_FAMILIES = list(FAMILIES)
SEQ_KEYS = ("mm_token_type_ids", "token_type_ids")  # processor outputs aligned with input_ids

# What each family's processor returns for one image (besides input_ids / attention_mask).
EXPECTED_KEYS = {
    "qwen2_vl": {"mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "qwen2_5_vl": {"mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "qwen3_vl": {"mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "llava": {"pixel_values"},
    "idefics3": {"pixel_values", "pixel_attention_mask"},
    "smolvlm": {"pixel_values", "pixel_attention_mask"},
    "gemma3": {"pixel_values", "token_type_ids"},
    "internvl": {"pixel_values"},
    "llava_onevision": {"pixel_values", "image_sizes", "batch_num_images"},
    "tinyllava": {"pixel_values"},
    "qwen2": set(),
    "qwen3": set(),
}


# ------------------------------------------------------------------ helpers


def image(seed: int, w: int = 64, h: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def load_plain(path):
    """Load with nothing but transformers' Auto classes."""
    config_vision = FAMILIES[path.name.rsplit("-", 1)[0]].vision
    model_cls = AutoModelForImageTextToText if config_vision else AutoModelForCausalLM
    processor = (AutoProcessor if config_vision else AutoTokenizer).from_pretrained(path)
    return model_cls.from_pretrained(path).eval(), processor


def make_prompt(processor, images=(), video=None, text: str = "How many?") -> Prompt:
    """Chat-template one user turn and run the processor, split as the data layer stores it."""
    content = [{"type": "image"} for _ in images] + ([{"type": "video"}] if video else [])
    content.append({"type": "text", "text": text})
    chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    kwargs = {}
    if images:
        kwargs["images"] = [list(images)]
    if video:
        kwargs["videos"] = [video]
    enc = processor(text=[chat], return_tensors="pt", **kwargs)
    seq = {k: enc[k][0].tolist() for k in SEQ_KEYS if k in enc}
    mm = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *SEQ_KEYS)}
    return Prompt(input_ids=enc["input_ids"][0].tolist(), mm=mm, seq=seq, text=chat)


def batch_of(prompts: list[Prompt], responses: list[list[int]], processor) -> Batch:
    eps = [Episode(prompt=p, response_ids=r, response_mask=[1] * len(r)) for p, r in zip(prompts, responses)]
    return Batch.from_episodes(eps, pad_token_id(processor))


def naive_logprobs(model, inputs: dict, responses: torch.Tensor, temperature: float = 1.0):
    """Reference: full [B, L, V] logits from the model's own forward (fine at test sizes)."""
    T = responses.shape[1]
    logits = model(**inputs).logits[:, -T - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1), entropy


def family_prompt(processor, family: str, seed: int = 0, size=(64, 64), text: str = "How many?") -> Prompt:
    images = [image(seed, *size)] if FAMILIES[family].vision else []
    return make_prompt(processor, images=images, text=text)


RESPONSES = [[400, 17, 250, 901, 33], [512, 88, 7]]


# ------------------------------------------------------------------ every family


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_generate_and_logprobs_match_model_logits(tiny_model_factory, family):
    path = tiny_model_factory(family)
    model, processor = load_plain(path)
    prompt = family_prompt(processor, family)
    enc = {k: torch.tensor([v]) for k, v in [("input_ids", prompt.input_ids), *prompt.seq.items()]}
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    assert set(prompt.mm) | set(prompt.seq) == EXPECTED_KEYS[family]
    with torch.no_grad():
        out = model.generate(**enc, **prompt.mm, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                             output_logits=True, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=pad_token_id(processor))
    P = enc["input_ids"].shape[1]
    resp = out.sequences[:, P:]
    assert resp.shape == (1, 5)
    gen_logp = torch.stack([torch.log_softmax(lg.float(), -1) for lg in out.logits], 1)
    gen_logp = gen_logp.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    # Greedy: every chosen token is the arg-max of generate's processed scores (EOS masked by min_new_tokens).
    assert torch.equal(resp[0], torch.stack([sc[0].argmax() for sc in out.scores]))

    inputs = batch_of([prompt], [resp[0].tolist()], processor).model_inputs()
    with torch.no_grad():
        logp, entropy = response_logprobs(model, inputs, resp, chunk_size=2, with_entropy=True)
        ref_logp, ref_entropy = naive_logprobs(model, inputs, resp)
    assert logp.dtype == torch.float32 and logp.shape == (1, 5)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(logp, gen_logp, atol=1e-4, rtol=0)

    # rllava's loader gives the same model.
    model2, processor2 = load_model_and_processor(ModelConfig(path=str(path)))
    model2.eval()
    with torch.no_grad():
        logp2, _ = response_logprobs(model2, inputs, resp)
    torch.testing.assert_close(logp2, logp, atol=1e-6, rtol=0)
    assert is_vlm(model2) == FAMILIES[family].vision
    assert get_tokenizer(processor2).decode(prompt.input_ids) == get_tokenizer(processor).decode(prompt.input_ids)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_left_padded_batch_equals_each_alone(tiny_model_factory, family):
    model, processor = load_plain(tiny_model_factory(family))
    # Different text lengths and (for VLMs) image sizes, so prompts and image token counts differ.
    prompts = [family_prompt(processor, family, seed=1, size=(64, 64)),
               family_prompt(processor, family, seed=2, size=(128, 48), text="Count the red circles in the image.")]
    assert len(prompts[0].input_ids) != len(prompts[1].input_ids)
    batch = batch_of(prompts, RESPONSES, processor)
    widths = []  # the sequences are packed to the right: as wide as the longest prompt + response, no wider
    hook = model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    with torch.no_grad():
        together, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
        hook.remove()
        assert widths == [max(len(p.input_ids) + len(r) for p, r in zip(prompts, RESPONSES))]
        for i, (p, r) in enumerate(zip(prompts, RESPONSES)):
            alone = batch_of([p], [r], processor)
            single, _ = response_logprobs(model, alone.model_inputs(), alone.responses)
            torch.testing.assert_close(together[i, :len(r)], single[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_rollout_prefills_each_prompt_once_with_the_same_outputs(tiny_model_factory, family):
    """HF rollout with n samples: each distinct prompt prefilled once (the cache gathered to its samples)
    gives the greedy responses of the plain `generate` on the repeated prompts, for prompts of different
    lengths and image sizes, and a chunk that splits a group."""
    from types import SimpleNamespace

    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling

    model, processor = load_plain(tiny_model_factory(family))
    prompts = [family_prompt(processor, family, seed=1, size=(64, 64)),
               family_prompt(processor, family, seed=2, size=(128, 48), text="Count the red circles in the image.")]
    sampling = Sampling(n=3, temperature=0.0, max_new_tokens=6)
    outputs = {}
    for share, batch_size in ((False, 0), (True, 0), (True, 4)):
        engine = HFRolloutEngine(model, pad_token_id(processor), eos_token_ids(model, processor), batch_size=batch_size,
                                 suppress_ids=placeholder_token_ids(model, processor),
                                 rollout_cfg=SimpleNamespace(share_prefill=share, generate_kwargs={}))
        calls = []
        hook = model.base_model.register_forward_pre_hook(
            lambda m, args, kwargs, calls=calls: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
        try:
            episodes = engine.generate(prompts, sampling)
        finally:
            hook.remove()
        outputs[(share, batch_size)] = [e.response_ids for e in episodes]
        if share and batch_size == 0:  # the first call is the prefill: 2 distinct prompts, all but their last token
            assert calls[0][0] == 2
    assert outputs[(True, 0)] == outputs[(False, 0)]
    assert outputs[(True, 4)] == outputs[(False, 0)]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_shared_prefill_positions_of_text_only_chunks(tiny_model_factory, family):
    """M-RoPE models, n > 1: a text-only chunk of prompts of different lengths (left padding), before and
    after an image chunk, gives the same log-probs and greedy tokens with the shared prefill as without."""
    from types import SimpleNamespace

    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling

    model, processor = load_plain(tiny_model_factory(family))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # default init gives near-uniform log-probs that hide shifted positions
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.08)
    text_only = [make_prompt(processor, text="Short?"),
                 make_prompt(processor, text="A much longer question about counting apples and oranges in a basket.")]
    with_images = [family_prompt(processor, family, seed=1), family_prompt(processor, family, seed=2, size=(56, 84))]
    sampling = Sampling(n=2, temperature=0.0, max_new_tokens=6, logprobs=True)
    results = {}
    for share in (False, True):
        engine = HFRolloutEngine(model, pad_token_id(processor), eos_token_ids(model, processor),
                                 suppress_ids=placeholder_token_ids(model, processor),
                                 rollout_cfg=SimpleNamespace(share_prefill=share, generate_kwargs={}))
        # The second text-only chunk finds the image chunk's M-RoPE offsets stored in the model.
        results[share] = [engine.generate(chunk, sampling) for chunk in (text_only, with_images, text_only)]
    for plain, shared in zip(results[False], results[True]):
        assert [e.response_ids for e in shared] == [e.response_ids for e in plain]
        for a, b in zip(plain, shared):
            torch.testing.assert_close(torch.tensor(b.rollout_logp), torch.tensor(a.rollout_logp), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_backward_reaches_vision_tower(tiny_model_factory, family):
    model, processor = load_plain(tiny_model_factory(family))
    batch = batch_of([family_prompt(processor, family, seed=3)], RESPONSES[:1], processor)
    logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses, chunk_size=2)
    logp.sum().backward()
    vision = vision_tower_params(model)
    assert vision, "no vision tower found"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision)
    head = model.get_output_embeddings().weight
    assert head.grad is not None and head.grad.abs().sum() > 0


# ------------------------------------------------------------------ chunking, temperature, softcap


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "qwen2"])
def test_small_chunks_equal_one_chunk_with_gradients(tiny_model_factory, family):
    model, processor = load_plain(tiny_model_factory(family))
    prompts = [family_prompt(processor, family, seed=4), family_prompt(processor, family, seed=5, text="What?")]
    batch = batch_of(prompts, RESPONSES, processor)
    results = []
    for chunk in (3, 10_000):  # 3 < B*T = 10: several chunks, the last one partial
        model.zero_grad()
        logp, ent = response_logprobs(model, batch.model_inputs(), batch.responses, temperature=0.7, chunk_size=chunk,
                                      with_entropy=True)
        (logp * batch.response_mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logp.detach(), ent.detach(), grads))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_a, lp_b, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_a, ent_b, atol=1e-6, rtol=0)
    assert len(g_a) == len(g_b) > 0
    for a, b in zip(g_a, g_b):  # only the summation order differs
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Temperature 0.7 is the distribution of logits / 0.7.
    with torch.no_grad():
        ref, _ = naive_logprobs(model, batch_of(prompts[:1], RESPONSES[:1], processor).model_inputs(),
                                torch.tensor(RESPONSES[:1]), temperature=0.7)
    torch.testing.assert_close(lp_a[0], ref[0], atol=1e-5, rtol=0)


def test_final_logit_softcapping_is_applied():
    """Gemma3ForCausalLM caps its logits; response_logprobs must apply the same transform."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                           final_logit_softcapping=0.05, sliding_window=16)  # a cap this small dominates the logits
    model = Gemma3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 9))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logp, _ = response_logprobs(model, inputs, ids[:, -4:])
        ref, _ = naive_logprobs(model, inputs, ids[:, -4:])
    torch.testing.assert_close(logp, ref, atol=1e-6, rtol=0)
    # With |logits| <= 0.05 every token is nearly uniform: log-probs sit within 0.1 of -log(128).
    assert (logp + np.log(128)).abs().max() < 0.1


# ------------------------------------------------------------------ several images, video


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3", "internvl", "llava_onevision", "tinyllava"])
def test_several_images_in_one_sample(tiny_model_factory, family):
    model, processor = load_plain(tiny_model_factory(family))
    resp = torch.tensor([RESPONSES[0]])
    logps = []
    for second in (image(11), image(12, 96, 64)):
        prompt = make_prompt(processor, images=[image(10), second], text="Which has more?")
        inputs = batch_of([prompt], RESPONSES[:1], processor).model_inputs()
        with torch.no_grad():
            logp, _ = response_logprobs(model, inputs, resp)
            ref, _ = naive_logprobs(model, inputs, resp)
        torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
        logps.append(logp)
    assert (logps[0] - logps[1]).abs().max() > 1e-6  # the second image is seen


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_video_as_list_of_frames(tiny_model_factory, family):
    model, processor = load_plain(tiny_model_factory(family))
    resp = torch.tensor([RESPONSES[0]])
    logps = []
    for seed in (20, 30):
        frames = [image(seed + i) for i in range(4)]
        prompt = make_prompt(processor, video=frames, text="What moves?")
        assert {"pixel_values_videos", "video_grid_thw"} <= set(prompt.mm)
        assert int(prompt.mm["video_grid_thw"][0, 0]) == 2  # 4 frames / temporal patch 2
        inputs = batch_of([prompt], RESPONSES[:1], processor).model_inputs()
        with torch.no_grad():
            logp, _ = response_logprobs(model, inputs, resp)
            ref, _ = naive_logprobs(model, inputs, resp)
            gen = model.generate(input_ids=inputs["input_ids"][:, :len(prompt.input_ids)],
                                 attention_mask=inputs["attention_mask"][:, :len(prompt.input_ids)],
                                 mm_token_type_ids=inputs["mm_token_type_ids"][:, :len(prompt.input_ids)],
                                 **prompt.mm, max_new_tokens=3, do_sample=False)
        assert gen.shape[1] == len(prompt.input_ids) + 3
        torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
        logps.append(logp)
    assert (logps[0] - logps[1]).abs().max() > 1e-6  # the frames are seen


# ------------------------------------------------------------------ LoRA, freezing, checkpointing


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2", "tinyllava"])
def test_lora_on_language_layers_and_disable_adapter_gives_base(tiny_model_factory, family):
    path = tiny_model_factory(family)
    base, processor = load_plain(path)
    model, _ = load_model_and_processor(ModelConfig(path=str(path), lora_rank=4, lora_alpha=8))
    model.eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    vision_ids = {id(p) for p in vision_tower_params(model)}
    assert not any(id(p) in vision_ids for n, p in model.named_parameters() if "lora_" in n)
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)

    batch = batch_of([family_prompt(processor, family, seed=6)], RESPONSES[:1], processor)
    inputs = batch.model_inputs()
    with torch.no_grad():
        base_logp, _ = response_logprobs(base, inputs, batch.responses)
        for n, p in model.named_parameters():  # pretend training moved the adapters (B starts at zero)
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
        tuned, _ = response_logprobs(model, inputs, batch.responses)
        with model.disable_adapter():
            ref, _ = response_logprobs(model, inputs, batch.responses)
    assert (tuned - base_logp).abs().max() > 1e-3
    torch.testing.assert_close(ref, base_logp, atol=1e-6, rtol=0)

    logp, _ = response_logprobs(model, inputs, batch.responses)
    logp.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_freeze_vision_tower(tiny_model_factory, family):
    model, processor = load_model_and_processor(ModelConfig(path=str(tiny_model_factory(family)),
                                                            freeze_vision_tower=True))
    vision = vision_tower_params(model)
    assert vision and not any(p.requires_grad for p in vision)
    batch = batch_of([family_prompt(processor, family, seed=7)], RESPONSES[:1], processor)
    logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    logp.sum().backward()
    assert all(p.grad is None for p in vision)
    vision_ids = {id(p) for p in vision}
    others = [p for p in model.parameters() if id(p) not in vision_ids]
    assert all(p.requires_grad for p in others)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in others)


def test_gradient_checkpointing_gives_same_logprobs_and_grads(tiny_model_factory):
    path = str(tiny_model_factory("qwen2_vl"))
    grads = []
    for ckpt in (False, True):
        model, processor = load_model_and_processor(ModelConfig(path=path, gradient_checkpointing=ckpt))
        model.train()
        batch = batch_of([family_prompt(processor, "qwen2_vl", seed=8)], RESPONSES[:1], processor)
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
        logp.sum().backward()
        grads.append((logp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=0)
    assert len(grads[0][1]) == len(grads[1][1])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ helpers and errors


def test_token_helpers(tiny_model_factory):
    model, processor = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2_vl"))))
    tok = get_tokenizer(processor)
    assert tok is processor.tokenizer
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert eos_token_ids(model, processor) == [im_end, eot]
    assert pad_token_id(processor) == eot
    text_model, text_tok = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2"))))
    assert get_tokenizer(text_tok) is text_tok and not is_vlm(text_model)
    assert vision_tower_params(text_model) == []


def test_load_errors_name_the_problem(tmp_path, tiny_model_factory):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_model_and_processor(ModelConfig(path=str(tmp_path / "does-not-exist")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_and_processor(ModelConfig(path=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="no vision tower"):
        load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), freeze_vision_tower=True))
    with pytest.raises(ValueError, match="model.dtype"):
        load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), dtype="float8"))
    with pytest.raises(ValueError, match="lora_target_modules"):
        load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), lora_rank=2,
                                             lora_target_modules="not_a_layer"))


def test_bfloat16_load(tiny_model_factory):
    model, processor = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    batch = batch_of([family_prompt(processor, "qwen2")], RESPONSES[:1], processor)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()


def test_pack_right_moves_per_token_tensors_only():
    from rllava.models.logprobs import pack_right

    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # [left pad | prompt | response | right pad]
    ids = torch.tensor([[0, 5, 6, 7, 0], [8, 9, 0, 0, 0]])
    decoy = torch.rand(2, 5)  # float [B, L] (pixels that happen to have this shape): not a per-token tensor
    packed, column = pack_right({"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": ids * 2,
                                 "pixel_values": decoy})
    assert packed["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert packed["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert packed["mm_token_type_ids"].tolist() == [[10, 12, 14], [0, 16, 18]]
    assert packed["pixel_values"] is decoy
    assert column[0, 1:4].tolist() == [0, 1, 2] and column[1, :2].tolist() == [1, 2]
