"""Greedy evaluation: accuracy over a prompt set plus a few samples; also `rllava eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rllava.data.types import Prompt
from rllava.engines import distributed as du


def evaluate(rollout, reward, prompts: list[Prompt], batch_size: int, n_samples: int = 4,
             prefix: str = "val") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate with the validation sampling settings, score, and average.

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
    totals = {"reward": sum(e.reward for e in episodes), "accuracy": sum(accuracy),
              "response_length": float(sum(len(e.response_ids) for e in episodes)), "n": float(len(episodes))}
    # Multi-turn scorers also report per-episode means (agent/turns, agent/tool_call_rate): keep them, as sums
    # so they average over all ranks' episodes. Every rank has the same keys (the scorer is the same).
    totals.update({k: v * len(episodes) for k, v in scored.items() if k.startswith("agent/")})
    totals = du.reduce_metrics(totals, {k: "sum" for k in totals})
    n = max(1.0, totals.pop("n"))
    metrics = {f"{prefix}/{k}": v / n for k, v in totals.items()}
    samples = [{"prompt": e.prompt.text, "response": e.response_text, "answer": e.prompt.meta.get("answer"),
                "reward": e.reward} for e in episodes[:n_samples]]
    return metrics, samples


def resolve_split(data: str, split: str) -> str:
    """A task folder (`rllava make-task` output) means its `<split>.parquet`; anything else is used as is."""
    p = Path(data)
    return str(p / f"{split}.parquet") if p.is_dir() and (p / f"{split}.parquet").exists() else data


def evaluate_model(model_path: str, data_files: str, rewards: dict[str, float], overrides: list[str] | None = None,
                   device: str = "auto", print_table: bool = True) -> dict[str, Any]:
    """Load a model folder and report greedy accuracy on a dataset: what `rllava eval` runs."""
    from rllava.config import load_config
    from rllava.data.dataset import RLDataset
    from rllava.engines.hf_rollout import HFRolloutEngine
    from rllava.models.introspect import placeholder_token_ids
    from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.pipelines.run import resolve_device
    from rllava.roles.reward import RewardScorer
    from rllava.roles.rollout import Rollout

    cfg = load_config(None, [f"model.path={model_path}", f"data.val_files={data_files}", *(overrides or [])])
    cfg.reward.functions = dict(rewards)
    dev = resolve_device(device)
    model, processor = load_model_and_processor(cfg.model, device=dev)
    ds = RLDataset(data_files, cfg.data, processor)
    prompts = [ds[i] for i in range(len(ds))][: cfg.data.max_val_samples]
    rollout = Rollout(HFRolloutEngine(model, pad_token_id(processor), eos_token_ids(model, processor), dev,
                                     suppress_ids=placeholder_token_ids(model, processor)),
                      get_tokenizer(processor), cfg.rollout)
    metrics, samples = evaluate(rollout, RewardScorer(cfg.reward), prompts, cfg.data.val_batch_size, n_samples=3,
                                prefix="eval")
    if print_table:
        print(f"{'model':<48} {'n':>5} {'accuracy':>9} {'reward':>8}")
        print(f"{model_path[-48:]:<48} {len(prompts):>5} {metrics['eval/accuracy']:>9.3f} {metrics['eval/reward']:>8.3f}")
        for s in samples:
            print(f"  prompt: {s['prompt'][-80:]!r}\n  response: {s['response'][:80]!r}  answer: {s['answer']!r}  reward: {s['reward']:.2f}")
    return {"model": model_path, "n": len(prompts), **metrics}


def evaluate_cli(args) -> dict[str, Any]:
    rewards = {name: 1.0 for name in args.reward.split(",") if name}
    overrides = [f"rollout.max_new_tokens={args.max_new_tokens}"]
    if args.template:
        overrides.append(f"data.template={args.template}")
    if args.max_samples:
        overrides.append(f"data.max_val_samples={args.max_samples}")
    return evaluate_model(args.model, resolve_split(args.data, args.split), rewards, overrides, device=args.device)
