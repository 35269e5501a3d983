"""The offline tokenizer, chat templates, the family registry and `make-tiny-model` folders."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

from rllava.models.chat_templates import chat_template
from rllava.models.tiny import MODEL_FAMILIES, make_tiny_model, tiny_config
from rllava.models.tiny_families import FAMILIES
from rllava.models.tokenizer import BPE_VOCAB_SIZE, TAG_TOKENS, build_tokenizer
from rllava.registry import UnknownNameError

QWEN_SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>"}


def test_tokenizer_round_trips_and_is_compact():
    tok = build_tokenizer(QWEN_SPECIAL, ["<|im_start|>"])
    text = "How many red circles are there? <think> 3 + 4 = 7 </think> <answer> 7 </answer>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) <= 22  # common demo words are single tokens
    for tag in TAG_TOKENS:  # reasoning/tool tags are one token each and survive skip_special_tokens
        assert len(tok.encode(tag)) == 1
    assert tok.decode(tok.encode("<answer>3</answer>"), skip_special_tokens=True) == "<answer>3</answer>"
    # Any byte sequence is encodable (all 256 bytes are in the alphabet): no unknown token.
    odd = "naïve 數字 🙂 \x00\x7f"
    assert tok.decode(tok.encode(odd)) == odd
    # Roles become attributes the processors read; special ids follow the BPE vocabulary and the tags.
    assert tok.image_token == "<|image_pad|>"
    assert tok.eos_token_id == BPE_VOCAB_SIZE + len(TAG_TOKENS)
    assert tok.image_token_id == tok.eos_token_id + 2
    assert tok.decode([tok.eos_token_id, 300], skip_special_tokens=True) == tok.decode([300])


def test_tokenizer_is_deterministic():
    a = build_tokenizer(QWEN_SPECIAL).backend_tokenizer.to_str()
    b = build_tokenizer(QWEN_SPECIAL).backend_tokenizer.to_str()
    assert a == b


def test_chat_templates_render_each_style():
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
            {"role": "assistant", "content": "<answer>3</answer>"},
            {"role": "tool", "content": "done"}]
    tok = build_tokenizer(QWEN_SPECIAL, chat_template=chat_template("qwen_vl"))
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>3</answer><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\ndone\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    tok = build_tokenizer({"eos_token": "</s>"}, chat_template=chat_template("llava"))
    assert tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True) == \
        "USER: <image>\nHow many? ASSISTANT:"
    tok = build_tokenizer({"bos_token": "<bos>"}, chat_template=chat_template("gemma3"))
    assert tok.apply_chat_template(msgs[1:3], tokenize=False) == (
        "<bos><start_of_turn>user\n<start_of_image>How many?<end_of_turn>\n"
        "<start_of_turn>model\n<answer>3</answer><end_of_turn>\n")


def test_registry_lists_every_family_and_rejects_typos(tmp_path):
    assert MODEL_FAMILIES.names() == sorted(FAMILIES)
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "smolvlm", "gemma3", "qwen2", "qwen3",
            "internvl", "llava_onevision", "tinyllava"} == set(FAMILIES)
    assert all(e.description for e in MODEL_FAMILIES)
    with pytest.raises(UnknownNameError, match="qwen2_vl"):
        make_tiny_model("qwen2-vl", tmp_path / "x")
    with pytest.raises(ValueError, match="small"):
        make_tiny_model("qwen2", tmp_path / "x", size="huge")


def test_folder_is_complete_and_loads_with_plain_transformers(tiny_model_factory):
    path = tiny_model_factory("qwen2_vl")
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    config = AutoConfig.from_pretrained(path)
    assert config.text_config.vocab_size % 64 == 0
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 32  # a vLLM head size
    rope = config.text_config.rope_parameters
    assert sum(rope["mrope_section"]) == 32 // 2
    tok = AutoTokenizer.from_pretrained(path)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    gen = GenerationConfig.from_pretrained(path)
    assert gen.eos_token_id == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 2e6


def test_gemma3_projection_is_not_zero(tiny_model_factory):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("gemma3"))
    proj = dict(model.named_parameters())["model.multi_modal_projector.mm_input_projection_weight"]
    assert 0.01 < float(proj.detach().std()) < 0.03


def test_same_seed_same_files(tmp_path):
    digests = []
    for name in ("a", "b"):
        out = make_tiny_model("qwen3", tmp_path / name, seed=3)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1]
    other = make_tiny_model("qwen3", tmp_path / "c", seed=4)
    assert hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest() != digests[0]["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert model.config.head_dim == 32 and model.config.tie_word_embeddings


def test_small_size_is_about_31m_params_for_qwen2_vl():
    config, _ = tiny_config("qwen2_vl", "small")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert 29e6 < n < 33e6


def test_cli_make_tiny_model(tmp_path, capsys):
    from rllava.cli import main

    assert main(["make-tiny-model", "--family", "qwen2", "--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2"


def test_cli_make_tiny_model_rejects_a_bad_size_or_out(tmp_path, capsys):
    """--size smal was a ValueError traceback, an --out that is a file a FileExistsError one."""
    from rllava.cli import TINY_SIZES, main
    from rllava.models.tiny_families import SIZES

    assert TINY_SIZES == list(SIZES)  # the CLI's choices, spelt out to keep its start light
    with pytest.raises(SystemExit) as exit_:
        main(["make-tiny-model", "--family", "qwen2", "--out", str(tmp_path / "m"), "--size", "smal"])
    assert exit_.value.code == 2 and "argument --size: invalid choice: 'smal'" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["make-tiny-model", "--family", "qwen2", "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"rllava: error: --out: {afile} is a file: give a folder to write the model into\n"
