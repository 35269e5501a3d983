"""Atomic checkpoints: `checkpoints/step_N/{model/, engine/, trainer_state.pt}`, keep the last k and the best.

A checkpoint is written into `step_N.tmp/` and renamed into place only when complete, so a
crash mid-write never leaves a folder that looks valid. Under torchrun every rank writes its
part (engine shards) into the same folder, which needs a filesystem all ranks share; rank 0
writes `trainer_state.pt` and renames once every rank is done. `model/` is a plain HF folder
that `from_pretrained` (and vLLM) load directly.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllava.config import Config, ConfigError, MissingFileError
from rllava.data.loader import FRESH_START
from rllava.engines import distributed as du
from rllava.models.weights import save_hf_folder

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


@contextlib.contextmanager
def checkpoint_folder(run_dir: Path, step: int, state: dict[str, Any] | None) -> Iterator[Path]:
    """Yield an empty `step_N.tmp/` for every rank to write into; then rank 0 adds `state` and renames it.

    Every rank must enter it (it holds barriers). `state` is only read on rank 0.
    """
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step}", root / f"step_{step}.tmp"
    if du.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    du.barrier()
    yield tmp
    if du.is_main():
        torch.save(state, tmp / STATE_FILE)
    du.barrier()  # every rank's files are complete
    if du.is_main():
        if final.exists():  # re-saving a step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)


def save_checkpoint(run_dir: Path, step: int, model, processor, state: dict[str, Any]) -> Path:
    """A checkpoint of a bare model (HF folder) and `state`, for use outside the trainer."""
    with checkpoint_folder(run_dir, step, state) as tmp:
        save_hf_folder(model, processor, tmp / "model")
    return Path(run_dir) / "checkpoints" / f"step_{step}"


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
    """Delete all but the newest `keep_last` checkpoints and the steps in `keep` (e.g. the best, the one just saved)."""
    ckpts = list_checkpoints(run_dir)
    newest = {s for s, _ in ckpts[-keep_last:]} if keep_last > 0 else set()
    for step, path in ckpts:
        if step not in newest and step not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


ABANDONED_DIR = "abandoned"  # under checkpoints/: the newer checkpoints of a run resumed from an older one


def set_aside_after(run_dir: Path, step: int) -> list[Path]:
    """Move the run's checkpoints of steps after `step` into a new folder of their own,
    `checkpoints/abandoned/<UTC time>-after_step_<step>/`; return their new places.

    Resuming from an older checkpoint branches the run: the newer checkpoints belong to the abandoned branch. Left
    in place, `keep_last` would count them (pruning the new branch's checkpoints, the one resumed from too) and
    `trainer.resume=auto` would later continue the abandoned branch. Moved rather than deleted: they may have cost
    hours, and the resume may have been a mistake. A folder per set-aside: a later fresh start or branch sets aside
    its own `step_N`s, which must not replace an earlier one's. Nothing looks inside `abandoned/` (not
    `list_checkpoints`, so neither pruning, `trainer.resume=auto` nor `rllava eval` of the run folder)."""
    newer = [path for s, path in list_checkpoints(run_dir) if s > step]
    if not newer:
        return []
    root = Path(run_dir) / "checkpoints" / ABANDONED_DIR
    root.mkdir(exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-after_step_{step}"
    dest, n = root / name, 1
    while True:  # two set-asides within a second (or a clock set back) get distinct folders
        try:
            dest.mkdir()
            break
        except FileExistsError:
            n += 1
            dest = root / f"{name}-{n}"
    for path in newer:
        os.replace(path, dest / path.name)
    return [dest / path.name for path in newer]


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)


# What fixes the trained parameter set and the optimizer state's layout, and the pipeline whose state and steps the
# checkpoint holds (an SFT run's folder reused for RL): a resume needs them unchanged.
RESUME_KEYS = [("model", "lora_rank"), ("model", "lora_target_modules"), ("model", "freeze_vision_tower"),
               ("actor", "strategy"), ("actor", "optimizer"), ("actor", "optimizer_offload"), ("trainer", "pipeline")]
CRITIC_DIR = "critic"  # in a checkpoint, when the run trains a critic
REFERENCE_FILE = "reference.safetensors"  # in a checkpoint, when reference.sync_steps moves the reference


def check_resumable(ckpt: Path, cfg: Config, critic: bool = False, moving_reference: bool = False) -> None:
    """Refuse, before any model loads, a checkpoint written with settings that change what is trained, or without
    the state this run needs (`critic`: this run trains one; `moving_reference`: reference.sync_steps moves its
    reference, which a supervised pipeline has none of)."""
    saved = load_state(ckpt).get("config") or {}
    changed = [f"{sec}.{key}: {saved[sec][key]!r} in the checkpoint, {getattr(getattr(cfg, sec), key)!r} now"
               for sec, key in RESUME_KEYS + ([("critic", "optimizer")] if critic else [])
               if key in saved.get(sec, {}) and saved[sec][key] != getattr(getattr(cfg, sec), key)]
    # A run that did not train a critic, or did not move its reference, saved none to go on from.
    if critic and not (Path(ckpt) / CRITIC_DIR).exists():
        changed.append(f"this run trains a critic (algorithm.adv_estimator={cfg.algorithm.adv_estimator}), the "
                       "checkpoint holds none")
    if moving_reference and not (Path(ckpt) / REFERENCE_FILE).exists():
        changed.append(f"reference.sync_steps={cfg.reference.sync_steps} moves the reference, the checkpoint holds "
                       "no moved reference (written with reference.sync_steps=0)")
    if changed:
        raise ConfigError(f"cannot resume from {ckpt}: " + "; ".join(changed) + FRESH_START)


def find_resume_checkpoint(mode: str, run_dir: Path) -> Path | None:
    """`trainer.resume`: "auto" = the newest complete checkpoint (if any), "none", or a folder."""
    if mode == "none":
        return None
    if mode == "auto":
        return latest_checkpoint(run_dir)
    if not (Path(mode) / STATE_FILE).exists():
        raise MissingFileError(f"trainer.resume={mode!r}: no {STATE_FILE} there")
    return Path(mode)
