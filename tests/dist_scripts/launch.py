"""Start `torchrun` from a test and make sure no rank outlives it.

torchrun runs every rank in a session of its own, so killing torchrun's process group leaves the
ranks behind (blocked in a collective for ever). SIGTERM makes torchrun stop them itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}  # CPU, gloo


def start_torchrun(args: list[str], log: Path, nproc: int = 2) -> subprocess.Popen:
    """`torchrun --standalone` (a free port) with `args`, output to `log` (a file: nobody reads a pipe meanwhile)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                start_new_session=True)


def stop_torchrun(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_torchrun(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for a clean exit; on failure or timeout stop every rank and fail with the log's tail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_torchrun(proc)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{log.read_text(errors='replace')[-6000:]}"


def on_every_rank(work: Callable[[], None]) -> None:
    """A torchrun worker's body: one thread per rank (two ranks on two cores), the process group around `work`,
    and a barrier so no rank tears the group down while another still uses it."""
    import torch

    from rllava.engines import distributed as du

    torch.set_num_threads(1)
    du.init_distributed()
    try:
        work()
        du.barrier()
    finally:
        du.destroy_distributed()
