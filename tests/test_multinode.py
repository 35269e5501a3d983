"""`rllava train` under torchrun on 2 nodes, simulated on localhost: two torchrun launches of one process each.

On node 1 LOCAL_RANK is 0 while RANK is 1, as on every node but the first of a real cluster. Code that takes the
local rank for the global one shows here: node 1 writing the run's files too, both nodes training on the first
prompt shard, or node 1 seeded and resumed as rank 0.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import ENV, stop_torchrun
from safetensors.torch import load_file

from rllava.config import load_config
from rllava.pipelines.run import run_experiment

NODES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multinode_train(args: list[str], node1_args: list[str], logs: Path, timeout: float = 120) -> None:
    """`rllava train args` as NODES torchrun launches (static rendezvous on a free port), node 1 also given
    `node1_args`; every node is stopped on a failure or timeout (a node left alone waits in a collective)."""
    port = free_port()
    procs = []
    for node in range(NODES):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc_per_node=1",
               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
               "-m", "rllava", "train", *args, *(node1_args if node == 1 else [])]
        with open(logs / f"node{node}.log", "w") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                          start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not all(p.poll() == 0 for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            stop_torchrun(p)
    for node, p in enumerate(procs):
        log = (logs / f"node{node}.log").read_text(errors="replace")
        assert p.returncode == 0, f"node {node} failed ({p.returncode}):\n{log[-6000:]}"


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))}


def test_two_nodes_train_like_one_process_and_resume(tiny_model_factory, tmp_path):
    """A 3-step FSDP2 SFT run on 2 nodes: the same metrics and weights as one process, every output written
    once, by node 0, and a resume from its step-2 checkpoint repeating step 3 exactly."""
    from rllava.tasks import make_task

    data = make_task("counting", tmp_path / "data", n=24, seed=0)
    over = [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={data / 'train.parquet'}",
            f"data.val_files={data / 'val.parquet'}", "data.template={{ prompt }} Answer with a number.",
            # SFT targets of different lengths ("3 x x"): shards told apart by their token counts
            "data.response_template={{ answer }}{% for i in range(5 - answer|int) %} x{% endfor %}",
            "data.max_val_samples=3", "data.batch_size=4", "data.shuffle=false", "data.val_batch_size=2",
            "actor.lr=1e-3", "actor.micro_token_budget=75", "rollout.max_new_tokens=8", "trainer.pipeline=sft",
            "trainer.total_steps=3", "trainer.save_freq=2", f"trainer.output_dir={tmp_path}",
            "trainer.experiment_name=one", "trainer.progress_bar=false", "trainer.loggers=[jsonl]",
            "trainer.device=cpu"]
    run_experiment(load_config(None, over))
    multi = [o.replace("experiment_name=one", "experiment_name=multi") for o in over] + ["actor.strategy=fsdp2"]
    # Only the writer of the run's files reads trainer.progress_bar (no collective does): given to node 1 alone,
    # it marks every config node 1 would write.
    marker = ["trainer.progress_bar=true"]
    multinode_train(multi, marker, tmp_path)

    run = tmp_path / "multi"
    one, rows = read_metrics(tmp_path / "one"), read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # one line a step: node 1 logs nothing
    for a, b in zip(one, rows):
        assert a.keys() == b.keys()
        for key in without_times(a):  # node 1 trained the second half of each batch, not the first again
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), (a["step"], key)
    assert [r["response/tokens"] for r in rows[1:]] == [20.0, 22.0, 23.0]  # the global batches' target tokens
    assert "progress_bar: false" in (run / "config.yaml").read_text()
    # The summary line, printed after the process group is gone: by global rank 0 only (every rank printed it).
    summaries = [[ln for ln in (tmp_path / f"node{n}.log").read_text().splitlines() if '"run_dir"' in ln]
                 for n in range(NODES)]
    assert len(summaries[0]) == 1 and summaries[1] == []

    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_3"]  # no stray step_N.tmp
    for ckpt in ckpts.iterdir():
        assert "progress_bar: false" in (ckpt / "config.yaml").read_text()
        assert sorted(p.name for p in (ckpt / "engine").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        assert state["world_size"] == 2 and state["config"]["trainer"]["progress_bar"] is False
        # seeded by global rank (trainer.seed + rank): node 1 is rank 1, not its local rank 0
        assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    # The exported HF folder, gathered from both nodes' shards, holds what one process trained.
    a = load_file(str(tmp_path / "one" / "checkpoints" / "step_3" / "model" / "model.safetensors"))
    b = load_file(str(ckpts / "step_3" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # Resume from step 2 into a new run folder: step 3 again, bit for bit, and each rank its own RNG state back.
    resumed = [o.replace("experiment_name=multi", "experiment_name=resumed") for o in multi]
    multinode_train([*resumed, f"trainer.resume={ckpts / 'step_2'}"], marker, tmp_path)
    again = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in again] == [3]
    assert without_times(again[0]) == without_times(rows[-1])
    b2 = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_3" / "model" / "model.safetensors"))
    assert all(torch.equal(b[k], b2[k]) for k in b)
    straight, restored = (torch.load(d / "checkpoints" / "step_3" / "trainer_state.pt", weights_only=False)["rng"]
                          for d in (run, tmp_path / "resumed"))
    assert all(torch.equal(s["torch"], r["torch"]) for s, r in zip(straight, restored))
