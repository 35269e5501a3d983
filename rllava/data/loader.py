"""`PromptLoader`: deterministic, epoch-aware batches of prompts that resume exactly.

The order of epoch e is a permutation drawn from `seed + e` alone, so (epoch, position) is the
whole state: `load_state_dict` continues with the very next prompt. Batches run on across epoch
boundaries (no prompt is dropped, every batch is full). Prompts can be retired (`retire`, e.g.
once solved): they are passed over from then on, and the set is part of the state.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

from rllava.data.rows import DataError

logger = logging.getLogger(__name__)


class PromptLoader:
    """Yields lists of `batch_size` prompts from `dataset` (anything with `__len__` and `__getitem__`)."""

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool = True, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("PromptLoader: the dataset is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0  # prompts of the current epoch already handed out (or skipped)
        self.skipped: set[int] = set()  # indices that failed to load (with skip_bad_rows)
        self.retired: set[int] = set()  # indices taken out of later batches (`retire`)
        self._warned_floor = False
        self._order = self._order_for(0)

    @property
    def steps_per_epoch(self) -> int:
        """Batches needed to see every prompt once."""
        return max(1, math.ceil(len(self.dataset) / self.batch_size))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _order_for(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=gen).tolist()

    def _next_index(self) -> int:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._order_for(self.epoch)
        idx = self._order[self.position]
        self.position += 1
        return idx

    def retire(self, indices: list[int]) -> int:
        """Pass over these prompts from now on; at least one batch's worth always stays. Returns how many were new."""
        new = [i for i in sorted(set(indices)) if i not in self.retired and i not in self.skipped]
        room = len(self.dataset) - len(self.skipped | self.retired) - self.batch_size
        if len(new) > room and not self._warned_floor:
            self._warned_floor = True
            logger.warning("%d of %d prompts are retired; the last %d stay in play so that a batch can be drawn "
                           "(solved ones among them keep coming back)", len(self.retired) + max(0, room),
                           len(self.dataset), self.batch_size)
        new = new[:max(0, room)]
        self.retired.update(new)
        return len(new)

    def _load(self, idx: int) -> Any | None:
        """The prompt, or None when it was retired, or fails to load and the dataset skips bad rows."""
        if idx in self.skipped or idx in self.retired:
            return None
        try:
            return self.dataset[idx]
        except DataError as e:
            if not getattr(self.dataset, "skip_bad_rows", False):
                raise
            self.skipped.add(idx)
            if hasattr(self.dataset, "n_bad"):
                self.dataset.n_bad += 1
            logger.warning("skipping a bad prompt (data.skip_bad_rows=true): %s", e)
            return None

    def next_batch(self) -> list[Any]:
        batch: list[Any] = []
        while len(batch) < self.batch_size:
            prompt = self._load(self._next_index())
            if prompt is not None:
                batch.append(prompt)
            elif len(self.skipped | self.retired) >= len(self.dataset):
                raise DataError("every prompt in the dataset failed to load" + (" or was retired" if self.retired else ""))
        return batch

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "size": len(self.dataset), "skipped": sorted(self.skipped), "retired": sorted(self.retired)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size", len(self.dataset)) != len(self.dataset):
            raise ValueError(f"loader state is for a dataset of {state['size']} prompts, this one has "
                             f"{len(self.dataset)}: the data changed since the checkpoint")
        self.seed = state.get("seed", self.seed)
        self.shuffle = state.get("shuffle", self.shuffle)
        self.epoch = state["epoch"]
        self.position = state["position"]
        self.skipped = set(state.get("skipped", []))
        self.retired = set(state.get("retired", []))
        self._order = self._order_for(self.epoch)
