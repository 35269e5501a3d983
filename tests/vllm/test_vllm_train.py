"""`rllava train ... rollout.engine=vllm` end to end: a tiny text model, GRPO steps, a clean exit."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm.entrypoints")  # a real vLLM, not this folder seen as a namespace package
pd = pytest.importorskip("pandas")  # the trainer's data stack (installed by scripts/ci_vllm.sh)


def test_grpo_with_vllm_rollouts(tiny_model_factory, tmp_path):
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows[:4]).to_parquet(tmp_path / "val.parquet")
    overrides = [
        f"model.path={tiny_model_factory('qwen2')}", f"data.train_files={tmp_path / 'train.parquet'}",
        f"data.val_files={tmp_path / 'val.parquet'}", "data.batch_size=2", "rollout.n=4", "rollout.max_new_tokens=8",
        "reward.functions={math: 1.0}", f"trainer.output_dir={tmp_path / 'out'}", "trainer.experiment_name=run",
        "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "trainer.total_steps=2",
        "rollout.engine=vllm", "rollout.enforce_eager=true",  # no torch.compile of the model on CPU
    ]
    proc = subprocess.run([sys.executable, "-m", "rllava", "train", *overrides], capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Traceback" not in output  # vLLM's teardown after the trainer left the process group stays quiet
    rows = [json.loads(line) for line in (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "val/accuracy" in rows[0]
    for r in rows[1:]:
        assert r["response/length_mean"] > 0 and "actor/loss" in r
