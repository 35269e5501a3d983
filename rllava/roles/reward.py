"""The reward role: scores episodes with the configured (weighted) reward functions and reward model."""
from __future__ import annotations

import math
from typing import Optional

import torch

from rllava.config import ConfigError, RewardConfig
from rllava.data.types import Episode
from rllava.rewards.combine import RewardFunction


def check_sources(cfg: RewardConfig, sources: dict[str, list[str]], require_used: bool = True) -> None:
    """Every data source of the data (split -> each prompt's source) has a reward, and (`require_used`) every
    `reward.by_source` entry names one of them (a misspelt name would silently leave its rows to `reward.functions`).
    Evaluation passes `require_used=False`: a training config's routing may cover more datasets than one eval set."""
    seen = sorted({s for split in sources.values() for s in split})
    unmatched = sorted(set(cfg.by_source) - set(seen))
    if unmatched and require_used:
        raise ConfigError(f"reward.by_source names {unmatched}, which no prompt comes from; the data's sources are "
                          f"{seen} (a row's data_source field, else its file's or folder's name)")
    if cfg.functions or cfg.model:
        return
    for split, names in sources.items():
        missing = sorted(set(names) - set(cfg.by_source))
        if missing:
            raise ConfigError(f"{split} data source(s) {missing} have no reward: reward.functions is empty and "
                              f"reward.by_source names only {sorted(cfg.by_source)}")


def source_means(episodes: list[Episode], accuracy_key: str = "accuracy") -> dict[str, float]:
    """`reward/source/NAME` (and `.../accuracy` where the rewards report it): each data source's mean over its
    episodes, when the batch mixes several."""
    by_source: dict[str, list[Episode]] = {}
    for e in episodes:
        by_source.setdefault(e.prompt.meta.get("data_source", ""), []).append(e)
    if len(by_source) < 2:
        return {}
    out = {}
    for name, group in sorted(by_source.items()):
        out[f"reward/source/{name}"] = sum(e.reward for e in group) / len(group)
        scored = [e.reward_info[accuracy_key] for e in group if accuracy_key in e.reward_info]
        if scored:
            out[f"reward/source/{name}/accuracy"] = sum(scored) / len(scored)
    return out


def info_means(episodes: list[Episode]) -> dict[str, float]:
    """`reward/KEY`: the mean of each reward part (`reward_info` key but "overall") over the episodes that have it."""
    keys = sorted({k for e in episodes for k in e.reward_info if k != "overall"})
    out = {}
    for k in keys:
        vals = [e.reward_info[k] for e in episodes if k in e.reward_info]
        out[f"reward/{k}"] = sum(vals) / len(vals)
    return out


class RewardScorer:
    def __init__(self, cfg: RewardConfig, plugins: Optional[list[str]] = None, device: torch.device | str = "cpu",
                 dtype: str = "float32"):
        self.fn = None
        if (cfg.functions or cfg.by_source) and cfg.workers:
            from rllava.rewards.workers import RewardWorkers

            self.fn = RewardWorkers(cfg.functions, cfg.on_error, cfg.workers, cfg.timeout_s, plugins, cfg.kwargs,
                                    cfg.by_source, cfg.accuracy_key)
        elif cfg.functions or cfg.by_source:
            self.fn = RewardFunction(cfg.functions, on_error=cfg.on_error, kwargs=cfg.kwargs, by_source=cfg.by_source,
                                     accuracy_key=cfg.accuracy_key)
        self.model = None
        if cfg.model:
            from rllava.roles.reward_model import load_reward_model

            self.model = load_reward_model(cfg, cfg.model_device or device, dtype)
        self.model_weight = cfg.model_weight
        self.on_error = cfg.on_error
        self.accuracy_key = cfg.accuracy_key
        self.n_errors = 0  # over the whole run

    def score(self, episodes: list[Episode]) -> dict[str, float]:
        """Fill episode.reward / reward_info; return the batch's reward metrics."""
        if not episodes:
            return {}
        responses = [e.response_text for e in episodes]
        if self.fn is not None:
            scores, infos, n_errors = self.fn(responses, [e.prompt.meta for e in episodes])
        else:
            scores, infos, n_errors = [0.0] * len(episodes), [{} for _ in episodes], 0
        if self.model is not None:
            values = self.model.score([e.prompt.query for e in episodes], responses, [e.prompt.meta for e in episodes],
                                      [e.prompt.images for e in episodes])
            for i, value in enumerate(values):
                if not math.isfinite(value):  # inf poisons the advantages as NaN does
                    value, n_errors = self.on_error, n_errors + 1
                scores[i] += self.model_weight * value
                infos[i]["reward_model"] = value
                infos[i]["overall"] = scores[i]
        self.n_errors += n_errors
        for e, s, info in zip(episodes, scores, infos):
            e.reward = float(s)
            e.reward_info = dict(info)
        metrics = {"reward/mean": sum(scores) / len(scores), "reward/errors": float(n_errors),
                   "reward/errors_total": float(self.n_errors)}
        metrics.update(getattr(self.model, "metrics", {}))  # a judge: how much probability its verdicts held
        if hasattr(self.fn, "n_timeouts"):  # worker processes: responses lost to the time limit or a crash
            metrics["reward/timeouts_total"] = float(self.fn.n_timeouts)
            metrics["reward/crashes_total"] = float(self.fn.n_crashes)
        metrics.update(info_means(episodes))
        metrics.update(source_means(episodes, self.accuracy_key))
        return metrics

    def state_dict(self) -> dict[str, int]:
        """The run-long counters (reward/errors_total, .../timeouts_total, .../crashes_total), for a resume."""
        state = {"n_errors": self.n_errors}
        if hasattr(self.fn, "n_timeouts"):
            state.update(n_timeouts=self.fn.n_timeouts, n_crashes=self.fn.n_crashes)
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n_errors = int(state.get("n_errors", 0))
        if hasattr(self.fn, "n_timeouts"):  # a run resumed without workers (reward.workers=0) drops their counts
            self.fn.n_timeouts, self.fn.n_crashes = int(state.get("n_timeouts", 0)), int(state.get("n_crashes", 0))

    def close(self) -> None:
        """Stop reward worker processes, if any."""
        if self.fn is not None:
            self.fn.close()
