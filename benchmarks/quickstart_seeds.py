"""How often the quickstart's GRPO (`make demo`) beats its SFT base: runs over seeds and repeats, one JSON line.

    python benchmarks/quickstart_seeds.py --seeds 0-9 --threads 2                     # today's settings
    python benchmarks/quickstart_seeds.py --seeds 0 --repeats 6 --threads 2 \\
        --rl-override actor.lr=5e-4 --rl-override "actor.betas=[0.9,0.999]"           # the settings before

With one thread a run repeats exactly. With two, float sums change order from run to run, as they do from one CPU
to another, so repeats of a seed show how much the result depends on that order. A run fails when its held-out
accuracy gains less than `--target` points over its SFT base (the issue's bar: 10). Prints one JSON line: the
runs, the failures, the gains (points) and how many runs reached accuracy 1.0; each run's own JSON line goes to
stderr as it finishes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def seed_list(spec: str) -> list[int]:
    """`0-9`, `0,3,5` or `0-2,7` -> the seeds."""
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def run_once(seed: int, threads: int, overrides: list[str], workdir: Path) -> dict:
    out = workdir / f"seed{seed}"
    cmd = [sys.executable, str(QUICKSTART), "--seed", str(seed), "--threads", str(threads), "--out", str(out)]
    cmd += [arg for o in overrides for arg in ("--rl-override", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"quickstart seed {seed} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-2", help="e.g. 0-9 or 0,3,5")
    ap.add_argument("--repeats", type=int, default=1, help="runs a seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=10.0, help="points over the SFT base a run must gain")
    ap.add_argument("--rl-override", action="append", default=[], metavar="KEY=VALUE", help="passed to the quickstart")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="rllava_quickstart_seeds_") as tmp:
        for seed in seed_list(args.seeds):
            for _ in range(args.repeats):
                result = run_once(seed, args.threads, args.rl_override, Path(tmp))
                print(json.dumps(result), file=sys.stderr, flush=True)
                runs.append(result)
    gains = [round(100 * (r["rl_accuracy"] - r["base_accuracy"]), 1) for r in runs]
    print(json.dumps({"runs": len(runs), "threads": args.threads, "overrides": args.rl_override,
                      "failures": sum(g < args.target for g in gains), "gains": gains,
                      "reached_1": sum(r["rl_accuracy"] >= 1.0 for r in runs),
                      "seconds_max": max(r["seconds"] for r in runs)}))


if __name__ == "__main__":
    main()
