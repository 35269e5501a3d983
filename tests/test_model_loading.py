"""Loading errors that must name their cause: a folder without tokenizer files, a misspelt LoRA target, "~" paths."""
from __future__ import annotations

import shutil

import pytest
import torch

from rllava.config import ConfigError, MissingFileError, ModelConfig
from rllava.models.load import get_tokenizer, load_model_and_processor, released_dtype


@pytest.mark.parametrize("family", ["qwen2", "qwen2_vl"])
def test_folder_without_tokenizer_files_is_an_error(tiny_model_factory, tmp_path, family):
    """transformers builds an empty tokenizer (1 token, every text -> []) from such a folder: loading stops there."""
    folder = tmp_path / family
    shutil.copytree(tiny_model_factory(family), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(MissingFileError, match=rf"{folder}.*no usable tokenizer.*tokenizer\.json"):
        load_model_and_processor(ModelConfig(path=str(folder)))
    # model.tokenizer_path naming such a folder is caught the same way; naming a good one loads.
    good = tiny_model_factory(family)
    with pytest.raises(MissingFileError, match=rf"{folder}.*no usable tokenizer"):
        load_model_and_processor(ModelConfig(path=str(good), tokenizer_path=str(folder)))
    _, processor = load_model_and_processor(ModelConfig(path=str(folder), tokenizer_path=str(good)))
    assert get_tokenizer(processor)("How many apples? 3").input_ids
    with pytest.raises(MissingFileError, match="model.tokenizer_path .*does not exist"):
        load_model_and_processor(ModelConfig(path=str(good), tokenizer_path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("targets, unknown", [("q_proj,v_porj", "v_porj"), ("q_proj, v_proj, lm_head", "lm_head")])
def test_lora_target_that_matches_nothing_is_an_error_beside_good_ones(tiny_model_factory, targets, unknown):
    """One misspelt (or out-of-decoder) name among good ones would silently leave that layer without an adapter."""
    with pytest.raises(ConfigError, match=rf"lora_target_modules.*named {unknown};.*linear layers are .*v_proj"):
        load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), lora_rank=4,
                                             lora_target_modules=targets))


def test_lora_targets_that_all_exist_load(tiny_model_factory):
    model, _ = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2_vl")), lora_rank=4,
                                                    lora_target_modules="q_proj, v_proj"))
    leaves = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_" in n}
    assert leaves == {"q_proj", "v_proj"}


def test_tilde_model_and_tokenizer_paths(tiny_model_factory, tmp_path, monkeypatch):
    """'~/...' from a YAML config (no shell to expand it) names the home folder, as data paths do."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_model_factory("qwen2"), tmp_path / "qwen2")
    model, processor = load_model_and_processor(ModelConfig(path="~/qwen2", tokenizer_path="~/qwen2"))
    assert model.config.model_type == "qwen2" and len(get_tokenizer(processor)) > 1
    assert released_dtype("~/qwen2") == torch.float32  # what trainer.export_dtype=auto reads
    with pytest.raises(MissingFileError, match="model.path '~/elsewhere' does not exist"):
        load_model_and_processor(ModelConfig(path="~/elsewhere"))


def test_a_folder_without_weights_is_an_error_naming_it(tiny_model_factory, tmp_path):
    """A config.json but no weights file: one error naming model.path, not transformers' OSError traceback."""
    from rllava.models.load import load_model

    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_factory("qwen2"), folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"model.path .*no-weights.*cannot load its weights"):
        load_model(ModelConfig(path=str(folder)))
