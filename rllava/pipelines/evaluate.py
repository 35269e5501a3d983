"""Evaluation: accuracy (greedy, or mean@n, pass@k and maj@n over n samples) plus a few samples; also `rllava eval`."""
from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

from rllava.data.types import Prompt
from rllava.engines import distributed as du


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn without replacement from n, c of them correct, is
    correct: 1 - C(n - c, k) / C(n, k), the unbiased pass@k estimator (Chen et al. 2021, arXiv 2107.03374)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_sums(solved: list[list[bool]], n: int) -> dict[str, float]:
    """Per k in 1, 2, 4, ..., n (none for n = 1): pass@k summed over prompts, each a list of n outcomes."""
    ks = sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n}) if n > 1 else []
    return {f"pass@{k}": sum(pass_at_k(n, sum(s), k) for s in solved) for k in ks}


def majority_correct(answers: list[str], solved: list[bool]) -> float:
    """Whether the most common answer among a prompt's samples is right; a tie counts each tied answer
    equally (the expected outcome of breaking it at random).

    Samples the reward judged right all equal the ground truth, so they are one answer however they
    are written ("1/2" and "0.5" under the math reward); a sample judged wrong that gives one of their
    texts (wrong on format, say) votes for it too. Wrong answers are told apart by their normalised text."""
    right = {a for a, ok in zip(answers, solved) if ok}
    wrong = collections.Counter(a for a, ok in zip(answers, solved) if a not in right)
    right_votes = len(answers) - sum(wrong.values())
    top = max(right_votes, *wrong.values()) if wrong else right_votes
    tied = sum(v == top for v in wrong.values()) + (right_votes == top)
    return float(right_votes == top) / tied


def _sums(episodes: list, accuracy: list[float], n: int) -> dict[str, float]:
    """Sums over the episodes (reward, accuracy, length, count) and over their prompts (pass@k, maj@n, count);
    the keys depend on n only, so every rank has the same."""
    from rllava.rewards.count import normalize_text
    from rllava.rewards.extract import final_answer

    solved = [[a >= 1.0 - 1e-6 for a in accuracy[i:i + n]] for i in range(0, len(accuracy), n)]
    sums = {"reward": sum(e.reward for e in episodes), "accuracy": sum(accuracy),
            "response_length": float(sum(len(e.response_ids) for e in episodes)), "n": float(len(episodes)),
            **pass_at_k_sums(solved, n), "n_prompts": float(len(solved))}
    if n > 1:  # majority voting over each prompt's final answers (<answer> tags, \boxed{}, else the text)
        answers = [normalize_text(final_answer(e.response_text)) for e in episodes]
        sums[f"maj@{n}"] = sum(majority_correct(answers[i:i + n], s) for i, s in zip(range(0, len(answers), n), solved))
    return sums


def evaluate(rollout, reward, prompts: list[Prompt], batch_size: int, n_samples: int = 4,
             prefix: str = "val") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate with the validation sampling settings, score, and average.

    With n samples a prompt (`rollout.val_n` > 1), accuracy is the mean over all samples (mean@n) and
    pass@k (k = 1, 2, 4, ..., n) is the unbiased estimate that one of k samples solves the prompt; a
    sample solves it when its accuracy is 1. Prompts from several datasets (`meta["data_source"]`) also
    get each dataset's metrics, under `{prefix}/{source}/`.

    Under torchrun rank r takes prompts r, r + world, ... and the averages are over all ranks (the
    samples are rank 0's). Every rank makes as many `generate` calls: entering generation gathers a
    sharded model, a collective, so a rank short of prompts generates copies of the first and drops them.
    """
    sampling = rollout.val_sampling()
    rank, world = du.rank(), du.world_size()
    mine = prompts[rank::world]
    per_rank = -(-len(prompts) // world)
    padded = mine + prompts[:1] * (per_rank - len(mine))
    step = max(1, batch_size)
    episodes = []
    for start in range(0, len(padded), step):
        episodes.extend(rollout.generate(padded[start:start + step], sampling, group_offset=start))
    episodes = episodes[: len(mine) * sampling.n]  # episodes come grouped by prompt, in prompt order
    scored = reward.score(episodes)
    accuracy = [float(e.reward_info.get(reward.accuracy_key, e.reward)) for e in episodes]
    groups = {"": _sums(episodes, accuracy, sampling.n)}
    # Multi-turn scorers also report per-episode means (agent/turns, agent/tool_call_rate): keep them, as sums
    # so they average over all ranks' episodes. Every rank has the same keys (the scorer is the same).
    groups[""].update({k: v * len(episodes) for k, v in scored.items() if k.startswith("agent/")})
    sources = sorted({p.meta.get("data_source", "") for p in prompts})  # the same on every rank
    if len(sources) > 1:  # several datasets: each one's own metrics too, under {prefix}/{source}/
        for source in sources:
            keep = [i for i, e in enumerate(episodes) if e.prompt.meta.get("data_source", "") == source]
            groups[f"{source}/"] = _sums([episodes[i] for i in keep], [accuracy[i] for i in keep], sampling.n)
    sums = {group + k: v for group, part in groups.items() for k, v in part.items()}
    sums = du.reduce_metrics(sums, {k: "sum" for k in sums})
    metrics = {}
    for group, part in groups.items():
        n, n_prompts = max(1.0, sums[f"{group}n"]), max(1.0, sums[f"{group}n_prompts"])
        for k in part:
            if k not in ("n", "n_prompts"):  # pass@k and maj@n are means over prompts, the rest over samples
                per_prompt = k.startswith(("pass@", "maj@"))
                metrics[f"{prefix}/{group}{k}"] = sums[group + k] / (n_prompts if per_prompt else n)
    # A multi-turn episode's response is its last turn (what rewards score); its transcript is every turn, the
    # environment's observations included, without which an agent's sample cannot be read.
    samples = [{"prompt": e.prompt.text, "response": e.response_text, "answer": e.prompt.meta.get("answer"),
                "reward": e.reward, **({"transcript": e.info["transcript"]} if "transcript" in e.info else {})}
               for e in episodes[:n_samples]]
    return metrics, samples


def metric_names(n: int, sources: list[str], multi_turn: bool = False, prefix: str = "val") -> list[str]:
    """The metrics `evaluate` reports with `n` samples a prompt (`rollout.val_n`) on prompts from `sources` (each
    prompt's data source), multi-turn episodes adding the agent's: known before any validation runs."""
    keys = [k for k in _sums([], [], n) if k not in ("n", "n_prompts")]  # evaluate's own keys, from its own code
    names = [f"{prefix}/{k}" for k in keys]
    if multi_turn:
        from rllava.pipelines.agentic import agent_metrics

        names += [f"{prefix}/{k}" for k in agent_metrics([])]
    distinct = sorted(set(sources))
    if len(distinct) > 1:
        names += [f"{prefix}/{source}/{k}" for source in distinct for k in keys]
    return names


# The pipelines whose validation episodes are multi-turn (and report agent/ metrics). Not env.name: the others ignore it.
MULTI_TURN_PIPELINES = ("agentic", "agentic_sft")


def check_best_metric(cfg, val_sources: list[str]) -> None:
    """`trainer.best_metric` is among the metrics a validation on prompts from `val_sources` (each validation
    prompt's data source) will report: checked before training, not at the first validation (maybe after the
    last step, before the final checkpoint). No validation prompts: nothing picks a best, nothing to check."""
    from rllava.config import ConfigError

    if not val_sources:
        return
    name = cfg.trainer.best_metric
    multi_turn = cfg.trainer.pipeline in MULTI_TURN_PIPELINES
    names = metric_names(cfg.rollout.val_n, val_sources, multi_turn=multi_turn)
    if name not in names:
        hint = (" (agent/ metrics need trainer.pipeline=agentic or agentic_sft)" if "/agent/" in name and not multi_turn
                else " (pass@k and maj@n need rollout.val_n > 1)" if cfg.rollout.val_n == 1 else "")
        raise ConfigError(f"trainer.best_metric={name!r} is not among the validation metrics: {names}{hint}")


def resolve_split(data: str, split: str) -> str:
    """A task folder (`rllava make-task` output) means its `<split>.parquet`, and a dataset repo (a folder or a
    hub name) or a saved DatasetDict folder its `@split`; anything else (a file, a single saved Dataset,
    `NAME@split`) is used as is."""
    from rllava.data.rows import is_hub_name, split_suffix

    p = Path(data)
    if not p.is_dir():
        return f"{data}@{split}" if is_hub_name(data) and split_suffix(data)[1] is None and not p.exists() else data
    if (p / f"{split}.parquet").exists():
        return str(p / f"{split}.parquet")
    return data if (p / "state.json").exists() else f"{data}@{split}"


def evaluate_model(model_path: str, data_files: str, rewards: dict[str, float] | None, overrides: list[str] | None = None,
                   device: str = "auto", print_table: bool = True, seed: int = 0, config: str | None = None,
                   base: list[str] | None = None) -> dict[str, Any]:
    """Load a model folder and report its accuracy on a dataset: what `rllava eval` runs. Sampling is seeded.
    Settings come from `config` (a training config, say), then `base` (settings as overrides: a checkpoint's own
    config, a task's), under the model and data and the overrides; `rewards` (None: the config's, else math) score. With `env.name` set, episodes are multi-turn against that environment and scored by the episode
    reward, as in `trainer.pipeline=agentic`."""
    from rllava.config import import_plugins, load_config
    from rllava.data.dataset import RLDataset
    from rllava.data.template import set_chat_template
    from rllava.engines.hf_rollout import HFRolloutEngine
    from rllava.models.introspect import placeholder_token_ids
    from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.pipelines.run import check_attn_implementation, loaded_prompts, resolve_device, seed_everything
    from rllava.roles.reward import RewardScorer, check_sources
    from rllava.roles.rollout import Rollout

    # A checkpoint's model folder holds the merged weights: no new LoRA adapters on it (a LoRA run's config asks for them).
    cfg = load_config(config, [*(base or []), f"model.path={model_path}", "model.lora_rank=0", "model.gradient_checkpointing=false",
                               f"data.val_files={data_files}", *(overrides or [])])
    if rewards is not None:  # they replace the config's: its per-source sets and reward model would score too
        cfg.reward.functions, cfg.reward.by_source, cfg.reward.model = dict(rewards), {}, None
        cfg.reward.kwargs = {name: kw for name, kw in cfg.reward.kwargs.items() if name in rewards}
    elif not (cfg.reward.functions or cfg.reward.by_source or cfg.reward.model):
        cfg.reward.functions = {"math": 1.0}  # nothing names a reward
    import_plugins(cfg.plugins)  # first: a plugin may register an attention function
    check_attn_implementation(cfg.model.attn_implementation)
    dev = resolve_device(device, "--device")
    seed_everything(seed)
    model, processor = load_model_and_processor(cfg.model, device=dev)
    set_chat_template(processor, cfg.data.chat_template)
    ds = RLDataset(data_files, cfg.data, processor)
    # reward.by_source routes by data source here too; an eval set may use only some of its sources.
    check_sources(cfg.reward, {"eval": ds.sources()}, require_used=False)
    prompts = loaded_prompts(ds, cfg.data.max_val_samples)
    rollout = Rollout(HFRolloutEngine(model, pad_token_id(processor), eos_token_ids(model, processor), dev,
                                     suppress_ids=placeholder_token_ids(model, processor), rollout_cfg=cfg.rollout,
                                     processor=processor),
                      get_tokenizer(processor), cfg.rollout)
    reward = RewardScorer(cfg.reward, cfg.plugins, dev, cfg.model.dtype)
    if cfg.env.name:
        from rllava.pipelines.agentic import EpisodeRewardScorer, multiturn_rollout

        rollout, reward = multiturn_rollout(cfg, processor, rollout), EpisodeRewardScorer(reward, cfg.env.reward_weights)
    try:
        metrics, samples = evaluate(rollout, reward, prompts, cfg.data.val_batch_size, n_samples=3, prefix="eval")
    finally:
        reward.close()
    counts = collections.Counter(p.meta.get("data_source", "") for p in prompts)
    result = {"model": model_path, "n": len(prompts), **metrics}
    if len(counts) > 1:
        result["sources"] = dict(sorted(counts.items()))
    if print_table:
        print(eval_table([result]))
        for s in samples:
            response = "".join(s.get("transcript", [s["response"]]))
            print(f"  prompt: {s['prompt'][-80:]!r}\n  response: {response[:160]!r}  answer: {s['answer']!r}  reward: {s['reward']:.2f}")
    return result


def eval_table(results: list[dict[str, Any]]) -> str:
    """`rllava eval`'s table: a row per model (accuracy, reward, pass@k, maj@n), and under it a row per dataset
    when the data mixes several."""
    passes = [k[5:] for k in results[0] if k.startswith(("eval/pass@", "eval/maj@"))]
    lines = [f"{'model':<48} {'n':>5} {'accuracy':>9} {'reward':>8}" + "".join(f" {k:>8}" for k in passes)]
    for r in results:
        rows = [(r["model"][-48:], r["n"], "eval/")]  # the whole set, then each dataset of several
        rows += [(f"  {source}"[:48], n, f"eval/{source}/") for source, n in r.get("sources", {}).items()]
        for name, n, at in rows:
            lines.append(f"{name:<48} {n:>5} {r[at + 'accuracy']:>9.3f} {r[at + 'reward']:>8.3f}"
                         + "".join(f" {r[at + k]:>8.3f}" for k in passes))
    return "\n".join(lines)


def _unfinished_or_set_aside(path: str, set_aside_too: bool) -> bool:
    """Whether `path` lies in a checkpoint being written (`checkpoints/step_N.tmp/`, or one left by a crash mid-save)
    or, with `set_aside_too`, in the checkpoints a branch or fresh start set aside (`checkpoints/abandoned/`)."""
    from rllava.pipelines.checkpoint import ABANDONED_DIR

    parts = Path(path).parts
    return any(parent == "checkpoints" and (name.endswith(".tmp") or (set_aside_too and name == ABANDONED_DIR))
               for parent, name in zip(parts, parts[1:]))


def model_folders(spec: str) -> list[str]:
    """`--model` of `rllava eval`: comma-separated folders (or hub names) and glob patterns, a pattern's matches in
    natural order (`step_20` before `step_100`). A run folder (`outputs/<experiment>`) means its checkpoints' models.
    Neither takes a checkpoint still being written, nor one set aside in `checkpoints/abandoned/` unless the pattern
    names that folder."""
    import glob
    import re

    from rllava.config import ConfigError
    from rllava.pipelines.checkpoint import ABANDONED_DIR

    def natural(path: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]

    models = []
    for part in (m.strip() for m in spec.split(",")):
        if part and any(c in part for c in "*?[") and not Path(part).exists():  # `run[1]` may be a folder's name
            matches = glob.glob(part)
            set_aside_too = ABANDONED_DIR not in Path(part).parts
            kept = sorted((m for m in matches if not _unfinished_or_set_aside(m, set_aside_too)), key=natural)
            if not kept:
                raise ConfigError(f"--model {part!r} matches no folder" + (
                    " but checkpoints being written (step_N.tmp) or set aside (checkpoints/abandoned/)" if matches else ""))
            models += kept
        elif part and not (Path(part) / "config.json").exists() and (Path(part) / "checkpoints").is_dir():
            from rllava.pipelines.checkpoint import list_checkpoints

            # Complete checkpoints only, by step: not a step_N.tmp being written (or left by a crash mid-save).
            found = [str(ckpt / "model") for _, ckpt in list_checkpoints(Path(part)) if (ckpt / "model").is_dir()]
            if not found:
                raise ConfigError(f"--model {part!r}: a run folder with no complete checkpoints/step_*/model yet")
            models += found
        elif part:
            models.append(part)
    if not models:
        raise ConfigError("--model names no model")
    return models


def yaml_value(value: Any) -> str:
    """`value` as an override's value (`key=VALUE`) that the override parser reads back unchanged. YAML, every
    non-ASCII character escaped: JSON writes a character beyond U+FFFF as a surrogate pair, which YAML reads as two
    lone surrogates; and written raw, U+0085 or U+2028 in a quoted scalar is a line break, folded into a space."""
    import math

    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=False)
    return text.removesuffix("\n").removesuffix("\n...").removesuffix("\n")  # a bare scalar's document end


def trained_settings(model: str) -> tuple[str, str | None, list[str]] | None:
    """The settings a checkpoint's model folder (`.../step_N/model`) was trained with, for `rllava eval`: (where they
    come from, a config file, overrides), None for a model folder of no run.

    The checkpoint's own config.yaml first: the run folder's is its latest invocation's, maybe a later fresh start's
    with other settings, and a checkpoint set aside in `checkpoints/abandoned/...` has none nearby. Else (a checkpoint
    written before checkpoints kept one) the config.yaml of the run (`<run>/checkpoints/step_N/model`)."""
    ckpt = Path(model).parent
    for found in (ckpt / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if found.is_file() and (found.parent == ckpt or ckpt.parent.name == "checkpoints"):
            return str(found), str(found), []
    return None


def task_overrides(data: str) -> list[str]:
    """A `rllava make-task` folder's own settings (task.yaml: template, rewards, environment, stop strings) as overrides."""
    from rllava.config import ConfigError, read_yaml_file

    path = Path(data) / "task.yaml"
    if not path.is_file():
        return []
    info = read_yaml_file(path, "task file") or {}  # broken YAML: an error naming the file and line
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (data, reward, env, rollout), got {info!r}")
    sections = {section: info.get(section) or {} for section in ("data", "reward", "env", "rollout")}
    for section, settings in sections.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: {section} must be a mapping of settings, got {settings!r}")
    env = dict(sections["env"])
    if env.get("corpus_path") and (Path(data) / "corpus.jsonl").is_file():  # the folder's own: task.yaml's path was
        env["corpus_path"] = str(Path(data) / "corpus.jsonl")              # relative to where make-task ran
    out = [f"data.template={yaml_value(sections['data']['template'])}"] if sections["data"].get("template") else []
    if sections["reward"].get("functions"):
        out.append(f"reward.functions={yaml_value(sections['reward']['functions'])}")
    return out + [f"{section}.{k}={yaml_value(v)}" for section, settings in (("env", env), ("rollout", sections["rollout"]))
                  for k, v in settings.items()]


def evaluate_cli(args) -> dict[str, Any] | list[dict[str, Any]]:
    """`rllava eval`. Settings (template, rewards, environment, stop strings, ...) come from `--config`, else from
    what each model's checkpoint was trained with, else from the data folder's task.yaml; flags override them."""
    from rllava.config import ConfigError

    models = model_folders(args.model)
    temperature = args.temperature if args.temperature is not None else (1.0 if args.n > 1 else 0.0)
    for flag, value in (("--max-samples", args.max_samples), ("--max-new-tokens", args.max_new_tokens), ("--n", args.n)):
        if value is not None and value < 1:  # 0 is a value, not "unset": it must not fall back to the default
            raise ConfigError(f"{flag} {value}: must be >= 1")
    if args.temperature is not None and not args.temperature >= 0:  # below 0 sampled greedily, n identical samples
        raise ConfigError(f"--temperature {args.temperature}: must be >= 0 (0: greedy)")
    max_samples = args.max_samples if args.max_samples is not None else "null"  # all rows unless asked: not the run's cap
    flags = [f"rollout.val_n={args.n}", f"rollout.val_temperature={temperature}", f"data.max_val_samples={max_samples}"]
    after = [f"data.template={args.template}"] if args.template else []
    after += getattr(args, "overrides", [])  # last: the user's own dotted overrides win
    config = getattr(args, "config", None)
    # Each model's own: a glob (or a run folder) may span checkpoints trained with other settings (a fresh start's).
    found = {m: (config, config, []) if config else trained_settings(m) for m in models}
    task = task_overrides(args.data) if None in found.values() else []
    plans = []  # (model, config file, base settings, overrides)
    for m in models:
        source, config_file, base = found[m] or (None, None, task)
        tokens = args.max_new_tokens if args.max_new_tokens is not None else (None if source else 128)
        plans.append((m, config_file, base, [*flags, *([f"rollout.max_new_tokens={tokens}"] if tokens else []), *after]))
    for source in dict.fromkeys(f[0] for f in found.values() if f):
        print(f"settings from {source}")
    rewards = {name: 1.0 for name in args.reward.split(",") if name} if args.reward else None
    data = resolve_split(args.data, args.split)
    if len(models) == 1:
        m, config_file, base, overrides = plans[0]
        return evaluate_model(m, data, rewards, overrides, device=args.device, seed=args.seed, config=config_file,
                              base=base)
    # Several models (a run's checkpoints, say): the same prompts and sampling seed for each, one table.
    results = [evaluate_model(m, data, rewards, overrides, device=args.device, print_table=False, seed=args.seed,
                              config=config_file, base=base) for m, config_file, base, overrides in plans]
    print(eval_table(results))
    return results
