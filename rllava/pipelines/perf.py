"""What a step costs beyond time: memory figures (`perf/*` metrics) and the torch profiler for chosen steps."""
from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from rllava.engines import distributed as du

GIB = 2**30
# Every `perf/*` figure is the largest over ranks: the rank closest to running out is the one that matters.
PERF_REDUCTIONS = {k: "max" for k in ("perf/cpu_rss_gb", "perf/cpu_peak_rss_gb", "perf/gpu_allocated_gb",
                                      "perf/gpu_peak_allocated_gb", "perf/gpu_peak_reserved_gb")}


def _rss_bytes() -> tuple[float, float]:
    """(resident set size now, its peak over the process's life), from /proc where there is one."""
    now = peak = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    value = float(line.split()[1]) * 1024  # kB
                    now, peak = (value, peak) if line.startswith("VmRSS:") else (now, value)
    except OSError:  # no /proc (macOS): ru_maxrss is the peak, in bytes there (kB on Linux)
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
    return now, peak


def memory_metrics(device: torch.device) -> dict[str, float]:
    """This process's memory after a step, in GiB. Peaks cover the whole run so far (validation included): the
    figure to compare with the memory a run has; nothing resets them, so scripts that read them stay right."""
    now, peak = _rss_bytes()
    out = {"perf/cpu_peak_rss_gb": peak / GIB}
    if now:
        out["perf/cpu_rss_gb"] = now / GIB
    if device.type == "cuda":
        out.update({"perf/gpu_allocated_gb": torch.cuda.memory_allocated(device) / GIB,
                    "perf/gpu_peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GIB,
                    "perf/gpu_peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GIB})
    return out


@contextlib.contextmanager
def profiled(run_dir: Path, step: int, device: torch.device) -> Iterator[None]:
    """Run the block under torch.profiler; write `profile/step_<step>/rank_<r>.trace.json` (open it in
    https://ui.perfetto.dev or chrome://tracing) and `rank_<r>.txt`, the ops that took the most time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        yield
    folder = run_dir / "profile" / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(folder / f"rank_{du.rank()}.trace.json"))
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=40)
    (folder / f"rank_{du.rank()}.txt").write_text(table + "\n")
