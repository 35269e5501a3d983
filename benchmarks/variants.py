"""Helpers for benchmarks that run each variant in a process of its own, so that peak memory is per variant."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run_variants(script: str, argv: list[str], variants: tuple[str, ...]) -> dict[str, dict]:
    """`script argv --variant V` for each variant in turn; each prints its result as its last line, in JSON."""
    results = {}
    for variant in variants:
        out = subprocess.run([sys.executable, script, *argv, "--variant", variant], check=True, capture_output=True,
                             text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    return results


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: its peak), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


def add_model_arguments(p: argparse.ArgumentParser, family: str, threads: int, variants: tuple[str, ...]) -> None:
    """The options of a one-forward benchmark: the model, where it runs, repetitions, and the internal --variant."""
    p.add_argument("--family", default=family)
    p.add_argument("--size", default="small", help="tiny | small | 2b (rllava.models.tiny_families.SIZES)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--variant", choices=variants, help=argparse.SUPPRESS)  # internal: one subprocess
