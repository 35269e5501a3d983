"""Shared fixtures: tiny offline model folders, built once per test session."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Two CPU cores: more threads only add contention for these tiny tensors.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make(family, size="tiny") -> Path` of a random-weight HF model folder (seed 0), cached per session."""
    from rllava.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[tuple[str, str], Path] = {}

    def make(family: str, size: str = "tiny") -> Path:
        key = (family, size)
        if key not in cache:
            cache[key] = make_tiny_model(family, root / f"{family}-{size}", size=size, seed=0)
        return cache[key]

    return make


@pytest.fixture
def short_counting_run(tiny_model_factory, tmp_path) -> Callable[..., list[str]]:
    """`overrides(*extra) -> list[str]`: a 2-step GRPO run of a tiny Qwen2-VL on 12 counting rows (2 prompts x 4
    samples of up to 6 tokens, lr 1e-3, an entropy bonus so that all-zero rewards still move the weights),
    checkpointed at its end under tmp_path; `extra` overrides come last."""
    from rllava.tasks import make_task

    data = make_task("counting", tmp_path / "data", n=12, seed=0)

    def overrides(*extra: str) -> list[str]:
        return [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={data / 'train.parquet'}",
                "data.val_files=", "data.template={{ prompt }} Answer with a number.", "data.batch_size=2",
                "rollout.n=4", "rollout.max_new_tokens=6", "rollout.temperature=1.0", "actor.lr=1e-3",
                "algorithm.entropy_coef=0.01", "reward.functions={count: 1.0}", f"trainer.output_dir={tmp_path}",
                "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "trainer.total_steps=2", "trainer.save_freq=2",
                *extra]

    return overrides


@pytest.fixture(scope="session")
def qwen_vl(tiny_model_factory):
    """The tiny Qwen2-VL's processor."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_factory("qwen2_vl"))


@pytest.fixture(scope="session")
def text_tok(tiny_model_factory):
    """The tiny text LLM's (qwen2) tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_factory("qwen2"))
