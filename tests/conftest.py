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
