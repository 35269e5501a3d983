"""The plain forward with each row's tokens packed together vs the [left-padded prompt | right-padded response] layout.

A micro-batch of rows whose prompts and responses differ in length (SFT on demonstrations, multi-turn
episodes, or any run with `actor.share_prompt=false`) is stored as [left-padded prompt | right-padded
response]: every row is as wide as the longest prompt plus the longest response. The forward packs each
row's real tokens to the right (`rllava.models.logprobs.pack_right`), so a row is as wide as the longest
whole sequence. Both give the same log-probs (tests/test_models.py); this script measures what it saves.

    python benchmarks/packing.py                   # Qwen2 "small" (text), CPU, fp32, 8 rows
    python benchmarks/packing.py --total 400       # rows of 400 tokens each, split differently
    python benchmarks/packing.py --device cuda --dtype bfloat16 --size 2b

Each variant runs in its own subprocess: build the model, then time `reps` forward + backward passes of
response log-probs (with entropy) after one warm-up; `unpacked` runs the stored layout as it is. Prints one
JSON line with median seconds, peak memory above the loaded model and the packed/unpacked ratios.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from variants import add_model_arguments, run_variants, status_mb

VARIANTS = ("unpacked", "packed")


def row_lengths(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(prompt, response) lengths of the rows, drawn independently and uniformly from their ranges; with
    `--total T` every row holds T tokens, split at a uniform prompt length (what rllava's micro-batching,
    which groups rows of similar whole lengths, puts together)."""
    rng = random.Random(args.seed)
    if args.total:
        return [(p, args.total - p) for p in (rng.randint(*args.prompt) for _ in range(args.rows))]
    return [(rng.randint(*args.prompt), rng.randint(*args.response)) for _ in range(args.rows)]


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from rllava.data.types import Batch, Episode, Prompt
    from rllava.models import logprobs
    from rllava.models.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    with torch.device(args.device):
        model, _ = build_tiny_model(args.family, args.size, seed=0)
    model.to(getattr(torch, args.dtype)).train()
    if args.variant == "unpacked":  # the stored layout as it is: every column kept
        logprobs.pack_right = lambda inputs: (inputs, torch.arange(inputs["attention_mask"].shape[1],
                                                                   device=inputs["attention_mask"].device)
                                              .expand_as(inputs["attention_mask"]))
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = lambda n: torch.randint(10, vocab - 64, (n,), generator=gen).tolist()  # noqa: E731
    lengths = row_lengths(args)
    episodes = [Episode(prompt=Prompt(input_ids=ids(p)), response_ids=ids(r), response_mask=[1] * r, group_id=i)
                for i, (p, r) in enumerate(lengths)]
    batch = Batch.from_episodes(episodes, 0).to(args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else status_mb("VmRSS")
    times = []
    for _ in range(args.reps + 1):  # the first pass is a warm-up
        t0 = time.perf_counter()
        logp, _ = logprobs.response_logprobs(model, batch.model_inputs(args.device), batch.responses, with_entropy=True)
        (logp * batch.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else status_mb("VmHWM")
    return {"s": statistics.median(times[1:]), "peak_mb": peak - base, "stored_width": batch.input_ids.shape[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p, family="qwen2", threads=1, variants=VARIANTS)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, nargs=2, default=[32, 256], help="prompt lengths: min max")
    p.add_argument("--response", type=int, nargs=2, default=[16, 256], help="response lengths: min max")
    p.add_argument("--total", type=int, default=0, help="every row this many tokens (prompt length drawn)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    res = run_variants(__file__, sys.argv[1:], VARIANTS)
    lengths = row_lengths(args)
    print(json.dumps({
        "family": args.family, "size": args.size, "device": args.device, "dtype": args.dtype, "rows": lengths,
        "real_tokens": sum(a + b for a, b in lengths), "stored_tokens": args.rows * res["packed"]["stored_width"],
        "packed_tokens": args.rows * max(a + b for a, b in lengths),
        "unpacked_s": round(res["unpacked"]["s"], 4), "packed_s": round(res["packed"]["s"], 4),
        "time_ratio": round(res["packed"]["s"] / res["unpacked"]["s"], 3),
        "unpacked_peak_mb": round(res["unpacked"]["peak_mb"], 1), "packed_peak_mb": round(res["packed"]["peak_mb"], 1),
        "memory_ratio": round(res["packed"]["peak_mb"] / res["unpacked"]["peak_mb"], 3),
    }))


if __name__ == "__main__":
    main()
