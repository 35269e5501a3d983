"""`RewardFunction`: a weighted sum of named reward functions that never stops a run on one bad sample.

Names are built-ins (`math`, `count`, ...) or `path/to/file.py:fn`. A component that raises
or returns a non-finite score is scored `on_error`, counted, and logged once per component; where it
reports accuracy, the row's accuracy is 0 (a row that could not be scored is not a correct one).
"""
from __future__ import annotations

import importlib.util
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rllava.config import ConfigError, MissingFileError, check_reward_kwargs, reward_names
from rllava.rewards.registry import REWARDS

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Any]


def _load_file_function(spec: str) -> RewardFn:
    path_str, _, fn_name = spec.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise MissingFileError(f"reward {spec!r}: file {path_str!r} not found")
    module_name = f"rllava_reward_{abs(hash(str(path.resolve())))}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:  # as `import` does: a half-run module must not stand in for the file next time
            del sys.modules[module_name]
            raise
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {path_str} has no function {fn_name!r}")
    return fn


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, or `path/to/file.py:fn` imported from a user file."""
    head, sep, _ = name.rpartition(":")
    if sep and head.endswith(".py"):
        return _load_file_function(name)
    return REWARDS.get(name)  # unknown: an error naming the closest built-in


def _reports_accuracy(name: str) -> bool:
    return name in REWARDS and bool(REWARDS.entry(name).meta.get("accuracy"))


def _as_dict(value: Any) -> dict[str, float]:
    """Normalise a float or dict reward; raise if it is not a finite score."""
    if isinstance(value, dict):
        if "overall" not in value:
            raise ValueError(f"a dict reward needs an 'overall' key, got keys {sorted(value)}")
        out = {k: float(v) for k, v in value.items()}
    else:
        out = {"overall": float(value)}
    for key, v in out.items():  # every part: a non-finite accuracy or extra key poisons the metrics' means
        if not math.isfinite(v):
            raise ValueError(f"non-finite reward {v}" if key == "overall" else f"non-finite reward key {key!r}: {v}")
    return out


class RewardFunction:
    """Weighted sum of reward components: `RewardFunction({"count": 1.0, "format": 0.1})`.

    `kwargs` gives components keyword arguments from the config (`reward.kwargs`), over the row's
    fields of the same name, e.g. `{"detection": {"iou_threshold": 0.75}}`. `by_source` gives the rows
    of some datasets (their `data_source`) a weighted set of their own, e.g. `{"counting": {"count": 1.0}}`;
    the other rows get `functions`. `accuracy_key` (`reward.accuracy_key`): a component's key that is the row's
    accuracy, kept under that bare name as `accuracy` is."""

    def __init__(self, functions: dict[str, float], on_error: float = 0.0,
                 kwargs: dict[str, dict[str, Any]] | None = None,
                 by_source: dict[str, dict[str, float]] | None = None, accuracy_key: str = "accuracy"):
        self.by_source = {source: dict(weights) for source, weights in (by_source or {}).items()}
        if not functions and not self.by_source:
            raise ConfigError("reward.functions is empty: name at least one reward function")
        check_reward_kwargs(functions, kwargs, self.by_source)
        self.weights = dict(functions)
        names = reward_names(functions, self.by_source)
        self.fns = {name: resolve_reward(name) for name in names}
        self.kwargs = {name: dict((kwargs or {}).get(name) or {}) for name in names}
        self.on_error = float(on_error)
        # Kept bare in `info` (not `name/key`): the key readers of accuracy (`reward.accuracy_key`) look up.
        self.accuracy_keys = {"accuracy", accuracy_key} - {"overall"}  # "overall" is the score itself
        # Component -> the accuracy keys it reports: built-ins say so up front, a user's function by returning one.
        self.reports: dict[str, set[str]] = {name: {"accuracy"} for name in names if _reports_accuracy(name)}
        self._logged: set[str] = set()

    def weights_for(self, meta: dict[str, Any]) -> dict[str, float]:
        """The weighted components that score a row: its data source's set, else `functions` (a run checks
        up front that no source is left with none: `roles.reward.check_sources`)."""
        return self.by_source.get(meta.get("data_source", ""), self.weights)

    def score_one(self, response: str, meta: dict[str, Any]) -> tuple[float, dict[str, float], list[tuple[str, str]]]:
        """(overall, info, failures) for one response; info holds each component and its extra keys.

        `failures` lists (component, error) for each component that raised or returned a non-finite score.
        """
        kwargs = {k: v for k, v in meta.items() if k not in ("response", "answer")}
        answer = meta.get("answer", "")
        weights = self.weights_for(meta)
        info: dict[str, float] = {}
        total, failures = 0.0, []
        for name, weight in weights.items():
            try:
                parts = _as_dict(self.fns[name](response, answer, **{**kwargs, **self.kwargs[name]}))
            except Exception as e:  # a reward bug must not end a long run: score it, count it, say it once
                failures.append((name, f"{type(e).__name__}: {e}"))
                parts = self._failed_parts(name)
            total += weight * self._add(info, name, parts)
        info["overall"] = total
        return total, info, failures

    def failed(self, meta: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """(overall, info) of a response whose scoring never finished: each of its components scored `on_error`."""
        weights = self.weights_for(meta)
        info: dict[str, float] = {}
        total = sum(weight * self._add(info, name, self._failed_parts(name)) for name, weight in weights.items())
        info["overall"] = total
        return total, info

    def _failed_parts(self, name: str) -> dict[str, float]:
        return {"overall": self.on_error, **{key: 0.0 for key in self.reports.get(name, ())}}

    def _add(self, info: dict[str, float], name: str, parts: dict[str, float]) -> float:
        """Record one component's parts in `info`; return its score."""
        info[name] = parts["overall"]
        for key, value in parts.items():
            if key in self.accuracy_keys:
                self.reports.setdefault(name, set()).add(key)
                info.setdefault(key, value)  # from the first component that reports it
            if key not in ("overall", "accuracy"):
                info[f"{name}/{key}"] = value
        return parts["overall"]

    def zero_failed_accuracy(self, info: dict[str, float], failed: list[str]) -> None:
        """A failed component that reports accuracy leaves its row incorrect: its accuracy keys become 0.

        Done once a batch is scored, so a user function's failure counts even on a row scored before the
        function first returned its accuracy (else the row drops out of the accuracy mean, biasing it up)."""
        for name in failed:
            for key in self.reports.get(name, ()):
                info[key] = 0.0
                if key != "accuracy":
                    info[f"{name}/{key}"] = 0.0

    def log_failures(self, failures: list[tuple[str, str]], meta: dict[str, Any] | None = None) -> None:
        """Log each failing component's first error, naming the row (`meta`); later ones are only counted."""
        row = ""
        if meta is not None and "index" in meta:
            row = f" on row {meta['index']}" + (f" of {meta['data_source']}" if meta.get("data_source") else "")
        for name, error in failures:
            if name not in self._logged:
                self._logged.add(name)
                logger.warning("reward %r failed%s (scored %s; further failures counted, not logged): %s",
                               name, row, self.on_error, error)

    def __call__(self, responses: list[str], prompts_meta: list[dict[str, Any]]) -> tuple[list[float], list[dict], int]:
        """Score each response against its prompt's metadata: (scores, infos, number of failed components)."""
        check_lengths(responses, prompts_meta)
        scores, infos, failed, n_errors = [], [], [], 0
        for response, meta in zip(responses, prompts_meta):
            total, info, failures = self.score_one(response, meta)
            self.log_failures(failures, meta)
            scores.append(total)
            infos.append(info)
            failed.append([name for name, _ in failures])
            n_errors += len(failures)
        for info, names in zip(infos, failed):
            self.zero_failed_accuracy(info, names)
        return scores, infos, n_errors

    def close(self) -> None:
        """Nothing to release in-process (the worker pool's twin stops its processes)."""


def check_lengths(responses: list[str], prompts_meta: list[dict[str, Any]]) -> None:
    if len(responses) != len(prompts_meta):
        raise ValueError(f"{len(responses)} responses but {len(prompts_meta)} prompt metadata entries")
