import json

import torch

from rllava.pipelines.checkpoint import (
    find_resume_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    prune_checkpoints,
    save_checkpoint,
)
from rllava.pipelines.logger import RunLogger


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 2)

    def save_pretrained(self, out, state_dict=None, safe_serialization=True):
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict if state_dict is not None else self.state_dict(), out / "weights.pt")


def test_atomic_save_latest_and_prune(tmp_path):
    m = TinyModel()
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, m, None, {"step": step})
    # a crash mid-write leaves only a .tmp folder, which is never picked up
    (tmp_path / "checkpoints" / "step_10.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_8"
    assert load_state(latest_checkpoint(tmp_path))["step"] == 8
    prune_checkpoints(tmp_path, keep_last=2, keep={2})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 6, 8]
    assert not (tmp_path / "checkpoints" / "step_10.tmp").exists()
    assert find_resume_checkpoint("none", tmp_path) is None
    assert find_resume_checkpoint("auto", tmp_path).name == "step_8"


def test_logger_truncates_after_resume_step(tmp_path):
    log = RunLogger(tmp_path, ["jsonl"], total_steps=5, progress_bar=False)
    for s in range(1, 5):
        log.log(s, {"reward/mean": float(s)})
    log.close()
    log = RunLogger(tmp_path, ["jsonl"], total_steps=5, start_step=2, progress_bar=False)
    assert [r["step"] for r in log.read_metrics()] == [1, 2]
    log.log(3, {"reward/mean": 9.0, "val/accuracy": 0.5})
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["reward/mean"] == 9.0
    assert log.plot().exists()
    log.close()
