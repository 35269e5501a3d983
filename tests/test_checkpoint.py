import json
from pathlib import Path

import pytest
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
    fresh = RunLogger(tmp_path, ["jsonl"], total_steps=5, start_step=0, progress_bar=False)  # trainer.resume=none
    assert fresh.read_metrics() == []  # the earlier run's lines, step 0 included, are gone
    fresh.close()


def test_logger_warns_once_when_learning_stalls(tmp_path, caplog):
    """STALL_STEPS steps in a row with every group scored alike: one warning naming the step, reward and entropy;
    a step with signal starts the count again."""
    from rllava.pipelines.logger import STALL_STEPS

    log = RunLogger(tmp_path, ["jsonl"], total_steps=40, progress_bar=False)
    fracs = [1.0] * (STALL_STEPS - 1) + [0.5] + [1.0] * (STALL_STEPS + 3)  # the 9 stalled steps do not count
    with caplog.at_level("WARNING", logger="rllava.pipelines.logger"):
        for step, frac in enumerate(fracs, 1):
            log.log(step, {"reward/zero_std_frac": frac, "reward/mean": 0.0, "actor/entropy": 0.02})
    log.close()
    warnings = [r.getMessage() for r in caplog.records if "scored alike" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"step {2 * STALL_STEPS}: for {STALL_STEPS} steps")
    assert "Reward 0, entropy 0.02" in warnings[0] and "actor.betas=[0.9,0.95]" in warnings[0]


def test_a_stall_warning_counts_the_steps_before_a_resume(tmp_path, caplog):
    """A run resumed part-way through a stall warns when the stall reaches STALL_STEPS, as an unbroken run does
    (the count started again from 0, so it warned late or never)."""
    from rllava.pipelines.logger import STALL_STEPS

    log = RunLogger(tmp_path, ["jsonl"], total_steps=40, progress_bar=False)
    half = STALL_STEPS // 2
    for step in range(1, half + 2):  # the step after `half` is written after the checkpoint: dropped on resume
        log.log(step, {"reward/zero_std_frac": 1.0})
    log.close()
    log = RunLogger(tmp_path, ["jsonl"], total_steps=40, start_step=half, progress_bar=False)
    with caplog.at_level("WARNING", logger="rllava.pipelines.logger"):
        for step in range(half + 1, STALL_STEPS + 1):
            log.log(step, {"reward/zero_std_frac": 1.0})
    log.close()
    assert [r.getMessage().split(":")[0] for r in caplog.records if "scored alike" in r.getMessage()] == [
        f"step {STALL_STEPS}"]


def test_resume_with_settings_that_change_what_is_trained_is_refused(short_counting_run, tiny_model_factory, monkeypatch):
    """trainer.resume=auto on a run folder written with other settings: a clear error, not a failure deep in loading."""
    import rllava.pipelines.run as run_module
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.run import run_experiment

    run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r")))
    loads = []
    monkeypatch.setattr(run_module, "build_context", lambda *a, **k: loads.append(a) or pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=r"model.lora_rank: 0 in the checkpoint, 4 now.*trainer.resume=none"):
        run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r", "model.lora_rank=4")))
    # state this run needs and the checkpoint lacks (it failed after a whole rollout, inside the critic's load)
    with pytest.raises(ConfigError, match=r"trains a critic \(algorithm.adv_estimator=gae\), the checkpoint holds none"):
        run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r", "algorithm.adv_estimator=gae")))
    with pytest.raises(ConfigError, match=r"reference.sync_steps=1 moves the reference.*trainer.resume=none"):
        run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r", "algorithm.kl_coef=0.01",
                                                            "reference.sync_steps=1")))
    assert loads == []
    monkeypatch.undo()
    other = tiny_model_factory("qwen2_vl", "small")  # the same family, other shapes: caught when the weights load
    with pytest.raises(ConfigError, match="was written for another model: size mismatch.*trainer.resume=none"):
        run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r", f"model.path={other}")))
    fresh = run_experiment(load_config(None, short_counting_run("trainer.experiment_name=r", "model.lora_rank=4",
                                                                "trainer.resume=none")))
    assert fresh["steps"] == 2


def test_checkpoint_hf_folder_is_written_in_the_released_dtype(short_counting_run, tiny_model_factory, tmp_path):
    """A bf16 model trains on fp32 masters; each checkpoint's HF folder is bf16 again (half the size, and what
    vLLM and from_pretrained load by default), while the engine state keeps the fp32 masters for resume."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from rllava.config import ConfigError, load_config
    from rllava.engines.local import ENGINE_FILE
    from rllava.pipelines.run import run_experiment

    bf16 = tmp_path / "bf16-model"
    source = tiny_model_factory("qwen2_vl")
    AutoModelForImageTextToText.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(bf16)
    for f in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
              "chat_template.jinja", "chat_template.json", "special_tokens_map.json", "video_preprocessor_config.json"):
        if (source / f).exists():
            (bf16 / f).write_bytes((source / f).read_bytes())

    def checkpoint(name: str, *extra: str):
        result = run_experiment(load_config(None, short_counting_run(f"model.path={bf16}",
                                                                     f"trainer.experiment_name={name}", *extra)))
        step = Path(result["run_dir"]) / "checkpoints" / "step_2"
        config = json.loads((step / "model" / "config.json").read_text())
        return (load_file(step / "model" / "model.safetensors"), config,
                torch.load(step / "engine" / ENGINE_FILE, weights_only=False)["model"], step / "model")

    weights, config, engine, folder = checkpoint("auto")
    assert config["dtype"] == "bfloat16"
    assert all(sub["dtype"] == "bfloat16" for sub in config.values() if isinstance(sub, dict) and "dtype" in sub)
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert {t.dtype for t in engine.values()} == {torch.float32}  # resume keeps the fp32 masters
    reloaded = AutoModelForImageTextToText.from_pretrained(folder)  # the default dtype: the folder's
    assert reloaded.dtype == torch.bfloat16
    state = reloaded.state_dict()
    assert set(engine) <= set(state)  # every trained tensor, rounded once from its fp32 master
    assert all(torch.equal(state[n], engine[n].to(torch.bfloat16)) for n in engine)

    step_2 = folder.parent / "trainer_state.pt"
    written = step_2.stat().st_mtime_ns
    resumed = run_experiment(load_config(None, short_counting_run(f"model.path={bf16}", "trainer.experiment_name=auto",
                                                                  "trainer.total_steps=3")))
    # Continued from that checkpoint (a fresh start would have written step 2 again), to step 3.
    assert resumed["steps"] == 3 and step_2.stat().st_mtime_ns == written

    weights, config, engine, folder = checkpoint("fp32", "trainer.export_dtype=float32")
    assert config["dtype"] == "float32" and {t.dtype for t in weights.values()} == {torch.float32}
    state = AutoModelForImageTextToText.from_pretrained(folder).state_dict()
    assert all(torch.equal(state[n], engine[n]) for n in engine)
    with pytest.raises(ConfigError, match="trainer.export_dtype='int8' is not one of"):
        run_experiment(load_config(None, short_counting_run(f"model.path={bf16}", "trainer.export_dtype=int8")))


def test_set_aside_after_moves_the_abandoned_runs_newer_checkpoints(tmp_path):
    """Resuming from step 2 of a run that reached step 5: steps 3-5 move to a folder of their own under
    checkpoints/abandoned/, so that neither keep_last nor trainer.resume=auto sees them."""
    from rllava.pipelines.checkpoint import set_aside_after

    m = TinyModel()
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, m, None, {"step": step})
    moved = set_aside_after(tmp_path, 2)
    assert [p.name for p in moved] == ["step_3", "step_4", "step_5"]
    batch = moved[0].parent
    assert batch.parent == tmp_path / "checkpoints" / "abandoned" and batch.name.endswith("-after_step_2")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]
    assert find_resume_checkpoint("auto", tmp_path).name == "step_2"
    assert load_state(batch / "step_4")["step"] == 4
    save_checkpoint(tmp_path, 3, m, None, {"step": 3})  # the branch goes on
    prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]  # the checkpoint resumed from is still there
    assert sorted(p.name for p in batch.iterdir()) == ["step_3", "step_4", "step_5"]
    assert set_aside_after(tmp_path, 3) == []


def test_a_second_set_aside_keeps_the_first(tmp_path):
    """Two set-asides of the same steps (two fresh starts in one run folder, within the same second here): the
    second used to replace the first's checkpoints/abandoned/step_N, deleting them."""
    from rllava.pipelines.checkpoint import set_aside_after

    m = TinyModel()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, m, None, {"step": step, "run": "first"})
    first = set_aside_after(tmp_path, 0)
    save_checkpoint(tmp_path, 1, m, None, {"step": 1, "run": "second"})
    second = set_aside_after(tmp_path, 0)
    assert first[0].parent != second[0].parent and list_checkpoints(tmp_path) == []
    assert [load_state(p)["run"] for p in first] == ["first", "first"]
    assert [load_state(p)["run"] for p in second] == ["second"]
    abandoned = tmp_path / "checkpoints" / "abandoned"
    assert sorted(p.name for p in abandoned.iterdir()) == sorted([first[0].parent.name, second[0].parent.name])


def test_resume_drops_a_torn_last_line(tmp_path):
    """A run killed while appending to metrics.jsonl / samples.jsonl leaves a torn last line: the resume drops it
    (it is after the checkpoint) instead of failing on it."""
    good = [json.dumps({"step": s, "reward/mean": 0.5}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(good) + '\n{"step": 4, "reward/me')
    (tmp_path / "samples.jsonl").write_text(json.dumps({"step": 2, "response": "7"}) + '\n{"step": 3, "resp')
    log = RunLogger(tmp_path, ["jsonl"], total_steps=10, start_step=2, progress_bar=False)
    assert (tmp_path / "metrics.jsonl").read_text() == good[0] + "\n" + good[1] + "\n"  # kept lines unchanged
    assert [json.loads(ln)["step"] for ln in (tmp_path / "samples.jsonl").read_text().splitlines()] == [2]
    log.log(3, {"reward/mean": 1.0})
    assert [r["step"] for r in log.read_metrics()] == [1, 2, 3]
    log.close()


def test_a_fresh_start_clears_the_earlier_runs_tensorboard_events(tmp_path):
    """metrics.jsonl starts empty on a fresh start in a used run folder; the TensorBoard events must too, or
    TensorBoard draws both runs' curves over each other. A resume keeps the events up to its step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(start_step: int, steps: range) -> None:
        log = RunLogger(tmp_path, ["jsonl", "tensorboard"], total_steps=5, start_step=start_step, progress_bar=False)
        for s in steps:
            log.log(s, {"reward/mean": float(s)})
        log.close()

    def tb_steps() -> list[int]:
        acc = EventAccumulator(str(tmp_path / "tensorboard"))
        acc.Reload()
        return [e.step for e in acc.Scalars("reward/mean")]

    run(0, range(1, 4))
    run(0, range(1, 3))  # trainer.resume=none: start over
    assert tb_steps() == [1, 2]
    run(1, range(2, 4))  # a resume from step 1
    assert tb_steps() == [1, 2, 3]
