"""`rllava check CONFIG`: everything a run checks before it trains, without loading weights or training.

A long job that fails after an hour of queueing on a bad row or a misspelt reward wastes the
hour. The check loads the config and its plugins, the optional packages it needs, the model's
config (parameters counted on the meta device: no weights are read) and processor, every row of
the train and validation files (templates rendered, media references and lengths checked, the
first prompt processed in full; each train row's demonstration where the pipeline trains on
them), the reward functions (each scores a few rows' own answers: one that raises on every one
of them is an error, since a run would only count it and train on `on_error` scores), the reward
model folder, trainer.best_metric (one of the metrics validation will report), and the pipeline's
settings; it then reports the sizes a run would see.
"""
from __future__ import annotations

import collections
import math
import statistics
from typing import Any

import torch

from rllava.config import Config, ConfigError, import_plugins


def preflight(cfg: Config) -> dict[str, Any]:
    """The run's sizes, or the first error a run would stop on (ConfigError, DataError, ...)."""
    from rllava.data.dataset import RLDataset
    from rllava.data.rows import DataError
    from rllava.models.introspect import is_vlm
    from rllava.models.load import (
        _auto_class_for,
        check_exists,
        check_model_path,
        check_vision_tower,
        load_model_config,
        load_processor,
    )
    from rllava.pipelines.evaluate import check_best_metric
    from rllava.pipelines.registry import PIPELINES
    from rllava.pipelines.run import (
        check_demonstrations,
        check_settings,
        needs_critic,
        optimizer_steps_per_step,
        sequences_per_step,
    )
    from rllava.rewards import RewardFunction
    from rllava.roles.reward import check_sources

    import_plugins(cfg.plugins)
    check_settings(cfg)
    if not cfg.data.train_files:  # a run stops on this too; the report needs the train split
        raise ConfigError("data.train_files is empty: give the training prompts' file(s)")
    pipeline = PIPELINES.get(cfg.trainer.pipeline)(cfg)  # a pipeline checks its settings (hooks, demonstrations) when built
    rewards = (RewardFunction(cfg.reward.functions, cfg.reward.on_error, cfg.reward.kwargs, cfg.reward.by_source)
               if cfg.reward.functions or cfg.reward.by_source else None)
    judge = None
    if cfg.reward.model:
        from rllava.roles.reward_model import reward_model_type

        if reward_model_type(cfg.reward) == "judge":  # its labels and template, without its weights
            from rllava.roles.judge import JudgeTemplate, label_token_ids

            label_token_ids(load_processor(cfg.reward.model, False), cfg.reward.judge_labels,
                            f"reward.model={cfg.reward.model!r}")
            judge = JudgeTemplate(cfg.reward.judge_template)
    check_model_path(cfg.model.path)
    if cfg.model.tokenizer_path:
        check_exists(cfg.model.tokenizer_path, "model.tokenizer_path")
    config = load_model_config(cfg.model.path, cfg.model.trust_remote_code)
    with torch.device("meta"):
        model = _auto_class_for(config).from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    vlm = is_vlm(model)
    check_vision_tower(cfg.model, model)
    processor = load_processor(cfg.model.tokenizer_path or cfg.model.path, vlm, cfg.model.trust_remote_code)

    report: dict[str, Any] = {"model_type": config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
                              "vision": vlm}
    sources: dict[str, list[str]] = {}  # split -> each prompt's data source
    for split, files in (("train", cfg.data.train_files), ("val", cfg.data.val_files)):
        if not files:
            continue
        ds = RLDataset(files, cfg.data, processor)  # every row: template, media references, estimated length
        first = ds[0]  # one prompt processed in full: images decoded, the processor run
        sources[split] = ds.sources()
        if split == "train":
            check_demonstrations(pipeline, ds)  # every row's, where the pipeline trains on demonstrations
        if split == "train" and rewards is not None:  # the first rows of each data source, scored by its rewards
            first_rows: dict[str, list[int]] = {}
            for i, source in enumerate(sources[split]):
                if len(first_rows.setdefault(source, [])) < 4:
                    first_rows[source].append(i)
            metas = [ds[i].meta for rows in first_rows.values() for i in rows]  # processed: with image sizes
            report["reward_of_answers"] = check_rewards(rewards, metas)
        if judge is not None:  # every row has the fields the judge's template reads
            for i in range(len(ds)):
                try:
                    judge.render(ds.items[i].query, "", ds.meta(i))
                except DataError as e:
                    raise DataError(f"{ds.where(i)}: {e}") from None
        lengths = [it.length for it in ds.items]
        report[split] = {"prompts": len(ds), "bad_rows": ds.n_bad, "too_long": ds.n_too_long,
                         "prompt_tokens_median": int(statistics.median(lengths)), "prompt_tokens_max": max(lengths),
                         "first_prompt_tokens": len(first.input_ids),
                         "sources": dict(collections.Counter(sources[split]))}
        if split == "train" and cfg.data.train_weights:  # the mix: each entry's prompts, and its draws an epoch
            from rllava.data.loader import mix_pools, shares
            from rllava.data.rows import file_entries

            pools = mix_pools(cfg.data.train_weights, ds.entries(), len(ds))
            report["train"]["mix"] = [{"entry": e, "prompts": len(pool), "per_epoch": k} for e, pool, k in zip(
                file_entries(files), pools, shares(cfg.data.train_weights, len(ds)))]
    check_sources(cfg.reward, sources)
    check_best_metric(cfg, sources.get("val", [])[: cfg.data.max_val_samples])  # the prompts a run validates on
    steps_per_epoch = max(1, math.ceil(report["train"]["prompts"] / cfg.data.batch_size))  # as PromptLoader
    supervised = bool(PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"))
    report["steps"] = min(cfg.trainer.total_steps, cfg.trainer.total_epochs * steps_per_epoch)
    report["epochs"] = report["steps"] / steps_per_epoch
    report["per_step"] = {"prompts": cfg.data.batch_size, "sequences": sequences_per_step(cfg),
                          "optimizer_steps": optimizer_steps_per_step(cfg)}
    report["roles"] = [r for r, on in (("reference", cfg.algorithm.kl_coef > 0 and not supervised),
                                      ("critic", not supervised and needs_critic(cfg)),
                                      ("reward model", bool(cfg.reward.model))) if on]
    return report


def check_rewards(rewards, metas: list[dict[str, Any]]) -> float:
    """Score each row's own answer, written as the prompt asks (`<answer>...</answer>`); the mean score.

    A component that raises on every row is a ConfigError: in a run it would fail on every response."""
    failures: dict[str, str] = {}
    total, counts = 0.0, {}
    for meta in metas:
        score, _, failed = rewards.score_one(f"<answer>{meta.get('answer', '')}</answer>", meta)
        total += score
        for name, error in failed:
            counts[name] = counts.get(name, 0) + 1
            failures.setdefault(name, error)
    broken = [n for n, c in counts.items() if c == len(metas)]
    if broken:
        raise ConfigError(f"reward {broken[0]!r} raised on each of {len(metas)} train rows given their own answer: "
                          f"{failures[broken[0]]}")
    return total / max(1, len(metas))


def print_report(report: dict[str, Any]) -> None:
    print(f"model      {report['model_type']}, {report['parameters'] / 1e6:.1f} M parameters"
          f"{' (vision)' if report['vision'] else ''}")
    for split in ("train", "val"):
        if split in report:
            r = report[split]
            print(f"{split:<10} {r['prompts']} prompts ({r['bad_rows']} bad rows skipped, {r['too_long']} too long "
                  f"dropped); prompt tokens median {r['prompt_tokens_median']}, max {r['prompt_tokens_max']}")
            if len(r["sources"]) > 1:
                print(f"{'':<10} sources: " + ", ".join(f"{name} {n}" for name, n in r["sources"].items()))
            for m in r.get("mix", []):
                print(f"{'':<10} {m['entry']}: {m['prompts']} prompts, {m['per_epoch']} drawn an epoch")
    ps = report["per_step"]
    print(f"steps      {report['steps']} ({report['epochs']:.1f} epochs): {ps['prompts']} prompts, {ps['sequences']} "
          f"sequences and {ps['optimizer_steps']} optimizer step(s) each")
    print(f"roles      actor{''.join(', ' + r for r in report['roles'])}")
    if "reward_of_answers" in report:
        print(f"rewards    the rows' own answers score {report['reward_of_answers']:.3f} on average")
    print("ok: nothing a run checks before training failed")
