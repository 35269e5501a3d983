"""Data: the Prompt/Episode/Batch types, row loading, prompt rendering, images and the prompt loader.

Names are imported lazily so that `rllava.data.types` stays as light as torch.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Prompt": "rllava.data.types", "Episode": "rllava.data.types", "Batch": "rllava.data.types",
    "DataError": "rllava.data.rows", "load_rows": "rllava.data.rows", "RowRef": "rllava.data.rows",
    "RLDataset": "rllava.data.dataset", "PromptLoader": "rllava.data.loader",
    "PromptTemplate": "rllava.data.template", "build_messages": "rllava.data.template",
    "load_image": "rllava.data.vision", "load_video": "rllava.data.vision", "resize_image": "rllava.data.vision",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rllava.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
