"""`perf/*` memory metrics and `trainer.profile_steps` (torch profiler traces of chosen steps)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rllava.config import ConfigError, load_config
from rllava.pipelines.perf import memory_metrics
from rllava.pipelines.run import run_experiment


def test_profiled_step_writes_a_trace_with_the_phases(short_counting_run):
    result = run_experiment(load_config(None, short_counting_run("trainer.profile_steps=[2]")))
    run = Path(result["run_dir"])
    assert not (run / "profile" / "step_1").exists()  # only the steps asked for
    trace = json.loads((run / "profile" / "step_2" / "rank_0.trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"rllava/rollout", "rllava/update"} <= names  # the pipeline's phases are labelled
    assert any(str(n).startswith("aten::") for n in names)
    table = (run / "profile" / "step_2" / "rank_0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table

    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r]
    assert len(steps) == 2
    peaks = [r["perf/cpu_peak_rss_gb"] for r in steps]
    assert peaks[0] > 0.1 and peaks == sorted(peaks)  # a peak over the run so far: never falls
    assert all(0 < r["perf/cpu_rss_gb"] <= r["perf/cpu_peak_rss_gb"] for r in steps)
    assert not any(k.startswith("perf/gpu") for k in steps[0])  # a CPU run has no GPU figures


def test_peak_rss_follows_a_large_allocation():
    before = memory_metrics(torch.device("cpu"))
    block = torch.ones(300 * 2**20 // 4)  # 300 MiB, written, so resident
    after = memory_metrics(torch.device("cpu"))
    del block
    assert (after["perf/cpu_rss_gb"] - before["perf/cpu_rss_gb"]) * 2**10 > 290  # MiB
    assert after["perf/cpu_peak_rss_gb"] >= after["perf/cpu_rss_gb"]
    assert after["perf/cpu_peak_rss_gb"] >= before["perf/cpu_peak_rss_gb"]


@pytest.mark.parametrize("steps", ["[0]", "[3]"])
def test_profile_steps_outside_the_run_are_refused(short_counting_run, steps):
    with pytest.raises(ConfigError, match=r"trainer.profile_steps=\[\d\]: steps run from 1 to trainer.total_steps=2"):
        load_config(None, short_counting_run(f"trainer.profile_steps={steps}"))
