"""Two torchrun ranks (gloo, CPU): each hosts a vLLM engine and syncs it from an FSDP2-sharded policy."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm.entrypoints")  # a real vLLM, not this folder seen as a namespace package

WORKER = Path(__file__).parent / "dist_vllm_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_rank_generates_its_shard_with_gathered_weights(tiny_model_factory, tmp_path):
    path = tiny_model_factory("qwen2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), str(path), str(tmp_path)]
    env_log = tmp_path / "torchrun.log"
    with open(env_log, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, env_log.read_text(errors="replace")[-6000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["indices"] for r in results] == [[0, 2], [1, 3]]  # prompts sharded by rank, as the trainer does
    for r in results:
        assert r["backend"] == "external_launcher"
        # The policy's weights were perturbed after vLLM loaded the folder: equal answers mean the shards arrived.
        assert r["ours"] == r["ref"], f"rank {r['rank']}"
        assert r["logp_max_diff"] < 1e-3
