"""What a user sees when a command stops early: one `rllava: ...` line, never a traceback from deep inside."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rllava.cli import main
from rllava.tasks import make_task


@pytest.fixture(scope="module")
def counting(tmp_path_factory) -> Path:
    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=12, seed=0)


def interrupt_when_ready(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `rllava ARGS`, wait for it to print "ready" (a plugin does), then press Ctrl-C (SIGINT)."""
    p = subprocess.Popen([sys.executable, "-m", "rllava", *args], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in p.stdout:
            if line.strip() == "ready":
                p.send_signal(signal.SIGINT)
                break
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_ctrl_c_before_training_is_one_line(tmp_path):
    """Ctrl-C during `rllava check` (here: while its plugins import) printed an 80-line traceback."""
    plugin = tmp_path / "slow_plugin.py"
    plugin.write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    done = interrupt_when_ready(["check", f"plugins=[{plugin}]", "model.path=/nonexistent"], tmp_path)
    assert done.returncode == 130 and done.stderr == "rllava: interrupted\n", done.stderr


def test_ctrl_c_in_the_training_loop_is_one_line(tiny_model_factory, counting, tmp_path):
    """Inside the loop too (the trainer records SIGTERM and SIGUSR1 to save and stop; SIGINT stops it at once)."""
    reward = tmp_path / "slow_reward.py"
    reward.write_text("import time\n\ndef slow(response, answer, **row):\n    print('ready', flush=True)\n"
                      "    time.sleep(60)\n    return 0.0\n")
    done = interrupt_when_ready(
        ["train", f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={counting / 'train.parquet'}",
         "data.val_files=", "data.batch_size=1", "rollout.n=2", "rollout.max_new_tokens=2",
         f"reward.functions={{'{reward}:slow': 1.0}}", f"trainer.output_dir={tmp_path}", "trainer.loggers=[jsonl]",
         "trainer.progress_bar=false", "trainer.total_steps=3"], tmp_path)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "rllava: interrupted"
    assert (tmp_path / "default" / "config.yaml").is_file()  # it was training (the run folder is made first)


def test_train_names_a_model_path_that_is_a_file(tiny_model_factory, counting, tmp_path, capsys):
    """model.path pointing at the weights file: an OSError traceback from transformers after the run started."""
    weights = tiny_model_factory("qwen2_vl") / "model.safetensors"
    capsys.readouterr()
    assert main(["train", f"model.path={weights}", f"data.train_files={counting / 'train.parquet'}", "data.val_files=",
                 f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false"]) == 2
    assert capsys.readouterr().err == (f"rllava: error: model.path '{weights}' is a file: give the HF model folder that "
                                       "holds it (config.json, weights, tokenizer)\n")
