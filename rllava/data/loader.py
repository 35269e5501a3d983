"""`PromptLoader`: deterministic, epoch-aware batches of prompts that resume exactly.

The order of epoch e is a permutation drawn from `seed + e` alone, so (epoch, position) is the
whole state: `load_state_dict` continues with the very next prompt. Batches run on across epoch
boundaries (no prompt is dropped, every batch is full). Prompts can be retired (`retire`, e.g.
once solved): they are passed over from then on, and the set is part of the state.

A mix (`weights`, one per source, and each prompt's source) keeps the epoch's length, the number of
prompts, but fills it by share: source k gives round(w_k / sum(w) * N) of its prompts, drawn in
fresh permutations of its own (so a small source repeats, each prompt once before any twice, and a
large one is subsampled), and the whole epoch is then shuffled. It too is drawn from `seed + e`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

from rllava.data.rows import DataError

logger = logging.getLogger(__name__)
FRESH_START = ". Start fresh with trainer.resume=none or a new trainer.experiment_name"  # how to start over a run that cannot resume


def load_or_skip(dataset: Any, idx: int) -> Any | None:
    """dataset[idx], or None when it fails to load and the dataset skips bad rows (counted in its `n_bad`, logged)."""
    try:
        return dataset[idx]
    except DataError as e:
        if not getattr(dataset, "skip_bad_rows", False):
            raise
        if hasattr(dataset, "n_bad"):
            dataset.n_bad += 1
        logger.warning("skipping a bad prompt (data.skip_bad_rows=true): %s", e)
        return None


class PromptLoader:
    """Yields lists of `batch_size` prompts from `dataset` (anything with `__len__` and `__getitem__`)."""

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool = True, seed: int = 0,
                 weights: list[float] | None = None, sources: list[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("PromptLoader: the dataset is empty")
        self.weights = list(weights) if weights else None
        self.pools = mix_pools(self.weights, sources, len(dataset)) if self.weights else None
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0  # prompts of the current epoch already handed out (or skipped)
        self.skipped: set[int] = set()  # indices that failed to load (with skip_bad_rows)
        self.retired: set[int] = set()  # indices taken out of later batches (`retire`)
        self._warned_floor = False
        # The prompts an epoch can hold: a source whose share is 0 (weight 0, or one too small to round up to a
        # prompt) is never drawn, so its prompts must not count as still in play.
        self.drawable = set(range(len(dataset))) if self.pools is None else {
            i for pool, count in zip(self.pools, shares(self.weights, len(dataset))) if count for i in pool}
        self._order = self._order_for(0)

    @property
    def steps_per_epoch(self) -> int:
        """Batches needed to see every prompt once."""
        return max(1, math.ceil(len(self.dataset) / self.batch_size))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _order_for(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        if self.pools is not None:
            order = []
            for pool, count in zip(self.pools, shares(self.weights, n)):
                rounds = -(-count // len(pool)) if count else 0
                picks = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(rounds)]) if rounds else []
                order += [pool[int(j)] for j in picks[:count]]
        else:
            order = list(range(n))
        if not self.shuffle:
            return order
        return [order[j] for j in torch.randperm(n, generator=gen).tolist()]

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
        out = self.skipped | self.retired
        new = [i for i in sorted(set(indices)) if i not in out]
        room = len(self.drawable - out) - self.batch_size
        if sum(i in self.drawable for i in new) > room and not self._warned_floor:
            self._warned_floor = True
            logger.warning("%d of %d prompts are retired; the last %d stay in play so that a batch can be drawn "
                           "(solved ones among them keep coming back)", len(self.retired & self.drawable) + max(0, room),
                           len(self.drawable), self.batch_size)
        # Undrawn prompts retire freely; drawable ones only down to the floor.
        drawable = [i for i in new if i in self.drawable][:max(0, room)]
        new = sorted(drawable + [i for i in new if i not in self.drawable])
        self.retired.update(new)
        return len(new)

    def _load(self, idx: int) -> Any | None:
        """The prompt, or None when it was retired, or fails to load and the dataset skips bad rows."""
        if idx in self.skipped or idx in self.retired:
            return None
        prompt = load_or_skip(self.dataset, idx)
        if prompt is None:
            self.skipped.add(idx)
        return prompt

    def next_batch(self) -> list[Any]:
        batch: list[Any] = []
        while len(batch) < self.batch_size:
            prompt = self._load(self._next_index())
            if prompt is not None:
                batch.append(prompt)
            elif not self.drawable - self.skipped - self.retired:
                which = "in the dataset" if len(self.drawable) == len(self.dataset) else "that data.train_weights draws"
                raise DataError(f"every prompt {which} failed to load" + (" or was retired" if self.retired else ""))
        return batch

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "size": len(self.dataset), "skipped": sorted(self.skipped), "retired": sorted(self.retired),
                "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size", len(self.dataset)) != len(self.dataset):
            raise DataError(f"loader state is for a dataset of {state['size']} prompts, this one has "
                            f"{len(self.dataset)}: the data changed since the checkpoint{FRESH_START}")
        if state.get("weights") != self.weights:  # the order of every epoch depends on them
            raise DataError(f"loader state is for data.train_weights={state.get('weights') or []}, this run has "
                            f"{self.weights or []}: the mix changed since the checkpoint{FRESH_START}")
        self.seed = state.get("seed", self.seed)
        self.shuffle = state.get("shuffle", self.shuffle)
        self.epoch = state["epoch"]
        self.position = state["position"]
        self.skipped = set(state.get("skipped", []))
        self.retired = set(state.get("retired", []))
        self._order = self._order_for(self.epoch)


def shares(weights: list[float], n: int) -> list[int]:
    """n split in proportion to `weights` (largest remainder: the parts sum to n exactly)."""
    total = sum(weights)
    exact = [w / total * n for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def mix_pools(weights: list[float], sources: list[int] | None, n: int) -> list[list[int]]:
    """The prompt indices of each source (the weights are checked with the config: `run.check_mix`); a clear
    error when a weighted source has no prompt left."""
    if sources is None or len(sources) != n:
        raise ValueError("a weighted mix needs each prompt's source")
    pools: list[list[int]] = [[] for _ in weights]
    for i, k in enumerate(sources):
        pools[k].append(i)
    empty = [k for k, (pool, w) in enumerate(zip(pools, weights)) if w > 0 and not pool]
    if empty:
        raise DataError(f"data.train_weights: train_files entry {empty[0]} has weight {weights[empty[0]]} but no "
                        "usable prompts (all dropped as bad or too long)")
    return pools
