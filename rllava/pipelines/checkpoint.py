"""Atomic checkpoints: `checkpoints/step_N/{model/, trainer_state.pt}`, keep the last k and the best.

A checkpoint is written into `step_N.tmp/` and renamed into place only when complete, so a
crash mid-write never leaves a folder that looks valid. `model/` is a plain HF folder that
`from_pretrained` (and vLLM) load directly; resuming loads the model from it too.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_folder(model, processor, out: Path) -> None:
    """An HF folder; LoRA adapters are merged into a copy so the folder loads without peft."""
    to_save = model
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out / "adapter")  # the adapter alone, for resuming
    to_save.save_pretrained(out, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out)


def save_checkpoint(run_dir: Path, step: int, model, processor, state: dict[str, Any]) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model_folder(model, processor, tmp / "model")
    torch.save(state, tmp / STATE_FILE)
    if final.exists():  # re-saving a step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / STATE_FILE).exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def prune_checkpoints(run_dir: Path, keep_last: int, keep: set[int] = frozenset()) -> None:
    """Delete all but the newest `keep_last` checkpoints and the steps in `keep` (e.g. the best)."""
    ckpts = list_checkpoints(run_dir)
    newest = {s for s, _ in ckpts[-keep_last:]} if keep_last > 0 else set()
    for step, path in ckpts:
        if step not in newest and step not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)


def find_resume_checkpoint(mode: str, run_dir: Path) -> Path | None:
    """`trainer.resume`: "auto" = the newest complete checkpoint (if any), "none", or a folder."""
    if mode == "none":
        return None
    if mode == "auto":
        return latest_checkpoint(run_dir)
    if not (Path(mode) / STATE_FILE).exists():
        raise FileNotFoundError(f"trainer.resume={mode!r}: no {STATE_FILE} there")
    return Path(mode)
