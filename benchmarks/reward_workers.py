"""Reward scoring in the trainer's process against `reward.workers=N` worker processes: wall time per batch.

    python benchmarks/reward_workers.py                    # 512 responses, the `math` reward, 2 workers
    python benchmarks/reward_workers.py --workers 4 --responses 2048

The batch is what a math RL step scores: seeded LaTeX answers (fractions, roots, polynomials,
intervals, plain numbers) checked by math-verify against their gold, about half of them equal in a
different form. Both sides score the same `--repeats` batches (each with new answers, so that no
cache carries over) after one warm-up batch (which imports math-verify in each process); prints one
JSON line with the median seconds a batch of each side and `speedup` = in-process / workers. The
scores must be identical, or it exits with an error.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """`n` responses with `<answer>` tags and their prompts' metadata (8 samples per prompt, as with rollout.n=8)."""
    rng = random.Random(seed)
    responses, metas = [], []
    for _ in range(n // 8):
        a, b, c = rng.randint(1, 9), rng.randint(2, 12), rng.randint(2, 50)
        gold, same, other = rng.choice([
            (rf"\frac{{{a}}}{{{b}}}", rf"\frac{{{2 * a}}}{{{2 * b}}}", rf"\frac{{{a + 1}}}{{{b}}}"),
            (rf"{a}\sqrt{{{c}}}", rf"\sqrt{{{a * a * c}}}", rf"{a}\sqrt{{{c + 1}}}"),
            (f"x^2 + {a}x + {b}", f"{b} + {a}x + x^2", f"x^2 + {b}x + {a}"),
            (rf"[{a}, {a + b})", rf"[{a},{a + b})", rf"({a}, {a + b}]"),
            (f"{a * b / 4:g}", rf"\frac{{{a * b}}}{{4}}", f"{a * b / 4 + 1:g}"),
        ])
        meta = {"answer": gold}  # one dict per prompt, shared by its samples (as the trainer passes them)
        for _ in range(8):
            pred = same if rng.random() < 0.5 else other
            responses.append(f"<think>working {rng.randint(0, 10**6)}</think><answer>{pred}</answer>")
            metas.append(meta)
    return responses, metas


def timed(fn, batches: list[tuple[list[str], list[dict]]]) -> tuple[float, list[float]]:
    fn(*make_batch(64, seed=-1))  # warm-up: imports math-verify (sympy) in every process
    times, scores = [], []
    for responses, metas in batches:
        t0 = time.perf_counter()
        scores += fn(responses, metas)[0]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reward", default="math")
    args = parser.parse_args()

    from rllava.rewards import RewardFunction
    from rllava.rewards.workers import RewardWorkers

    batches = [make_batch(args.responses, seed) for seed in range(args.repeats)]
    functions = {args.reward: 1.0}
    inproc_s, inproc_scores = timed(RewardFunction(functions), batches)
    t0 = time.perf_counter()
    pool = RewardWorkers(functions, workers=args.workers)
    start_s = time.perf_counter() - t0
    try:
        workers_s, worker_scores = timed(pool, batches)
    finally:
        pool.close()
    if worker_scores != inproc_scores:
        raise SystemExit("the workers' scores differ from the in-process scores")
    print(json.dumps({"responses": args.responses, "reward": args.reward, "workers": args.workers,
                      "accuracy": round(sum(inproc_scores) / len(inproc_scores), 3),
                      "inproc_s": round(inproc_s, 3), "workers_s": round(workers_s, 3),
                      "workers_start_s": round(start_s, 3), "speedup": round(inproc_s / workers_s, 2)}))


if __name__ == "__main__":
    main()
