"""Review findings in models, log-probs and the HF rollout engine, each shown on a real tiny model."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rllava.data.types import Prompt
from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
from rllava.models.introspect import eos_token_ids, pad_token_id, placeholder_token_ids


@pytest.mark.parametrize("family", ["llava", "tinyllava"])
def test_shared_prefill_of_a_prompt_that_ends_in_an_image(tiny_model_factory, family):
    """A raw prompt ending in its image placeholder ("Question: ... <image>", as a custom data.chat_template
    for a base model renders it): the shared prefill, which leaves out each prompt's last token, used to
    hand the model one placeholder fewer than the image's features (ValueError). Greedy n=2 now equals
    the plain `generate` on the prompt."""
    path = tiny_model_factory(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))
    enc = processor(text=["Question: how many circles? " + processor.image_token], images=[[image]], return_tensors="pt")
    suppress = placeholder_token_ids(model, processor)
    assert int(enc["input_ids"][0, -1]) in suppress
    prompt = Prompt(input_ids=enc["input_ids"][0].tolist(),
                    mm={k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")})
    eos = eos_token_ids(model, processor)
    with torch.no_grad():
        plain = model.generate(**enc, max_new_tokens=4, do_sample=False, eos_token_id=eos, suppress_tokens=suppress,
                               pad_token_id=pad_token_id(processor))[0, enc["input_ids"].shape[1]:].tolist()
    engine = HFRolloutEngine(model, pad_token_id(processor), eos, suppress_ids=suppress,
                             rollout_cfg=SimpleNamespace(share_prefill=True, generate_kwargs={}))
    episodes = engine.generate([prompt], Sampling(n=2, temperature=0.0, max_new_tokens=4))
    assert len(plain) == 4 and [e.response_ids for e in episodes] == [plain, plain]


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 4194304\n")


def test_weights_that_are_git_lfs_pointers_or_truncated_are_an_error_naming_them(tiny_model_factory, tmp_path):
    """A folder cloned without git-lfs holds ~130-byte pointer files where the weights should be; a copy cut
    short holds part of them. safetensors' own error ("header too large", "incomplete metadata") named neither
    the folder nor the file: now a MissingFileError names model.path, and the pointer file."""
    from rllava.config import MissingFileError, ModelConfig
    from rllava.models.load import load_model, load_model_and_processor

    pointer = tmp_path / "lfs"
    shutil.copytree(tiny_model_factory("qwen2"), pointer)
    (pointer / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(MissingFileError, match=r"model.path .*lfs.*cannot load its weights.*model\.safetensors is a "
                                               r"Git LFS pointer.*git lfs pull"):
        load_model(ModelConfig(path=str(pointer)))

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_factory("qwen2"), cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(MissingFileError, match=r"model.path .*cut.*cannot load its weights") as err:
        load_model(ModelConfig(path=str(cut)))
    assert "LFS" not in str(err.value)

    tokenizer = tmp_path / "lfs-tokenizer"
    shutil.copytree(tiny_model_factory("qwen2"), tokenizer)
    (tokenizer / "tokenizer.json").write_text(LFS_POINTER)
    with pytest.raises(MissingFileError, match=r"lfs-tokenizer.*cannot load its tokenizer.*tokenizer\.json is a Git "
                                               r"LFS pointer"):
        load_model_and_processor(ModelConfig(path=str(tokenizer)))
