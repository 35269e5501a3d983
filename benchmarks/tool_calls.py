"""Stepping multi-turn environments one at a time against `env.workers` threads: one turn of python tool calls.

    python benchmarks/tool_calls.py                    # 32 episodes, each calls the sandboxed python tool once
    python benchmarks/tool_calls.py --episodes 64 --workers 16

Each episode's environment is the real `tools` environment with the `python` tool: the policy's
turn is a `<tool_call>` that runs a short computation in the sandbox (a fresh, limited subprocess
a call). The benchmark times `MultiTurnRollout._step` (what a rollout turn does after
generation) serially and with the workers, checks the observations are identical, and prints one
JSON line with the seconds of each and `speedup`.
"""
from __future__ import annotations

import argparse
import json
import time

from rllava.config import load_config
from rllava.envs import make_environment
from rllava.roles.multiturn import MultiTurnRollout

CALL = ('<tool_call>{"name": "python", "arguments": {"code": "print(sum(i * i for i in range(%d)))"}}</tool_call>')


def one_turn(workers: int, episodes: int) -> tuple[float, list[str]]:
    cfg = load_config(None, ["env.name=tools", "env.tools=[python]"]).env
    envs = [make_environment(cfg) for _ in range(episodes)]
    for env in envs:
        env.reset({"answer": "0"}, [])
    rollout = MultiTurnRollout(None, None, None, 0, env_workers=workers)
    t0 = time.perf_counter()
    results = rollout._step(envs, [CALL % (1000 + i) for i in range(episodes)])
    seconds = time.perf_counter() - t0
    for env in envs:
        env.close()
    return seconds, [r.observation.text if r.observation else "" for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    one_turn(1, 2)  # warm-up: imports, the sandbox's first start
    serial, a = one_turn(1, args.episodes)
    threaded, b = one_turn(args.workers, args.episodes)
    if a != b:
        raise SystemExit("the threaded observations differ from the serial ones")
    print(json.dumps({"episodes": args.episodes, "workers": args.workers, "serial_s": round(serial, 3),
                      "threaded_s": round(threaded, 3), "speedup": round(serial / threaded, 2),
                      "example_observation": a[0][:60]}))


if __name__ == "__main__":
    main()
