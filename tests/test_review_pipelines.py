"""The training loop, run setup and CLI under settings copied from other runs, and bad values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rllava.cli import main
from rllava.config import ConfigError, load_config
from rllava.data.rows import DataError
from rllava.pipelines.checkpoint import list_checkpoints, load_state
from rllava.pipelines.run import run_experiment


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rl_settings", [
    ("algorithm.adv_estimator=gae",),  # examples/counting_ppo.yaml: a critic only RL trains
    ("algorithm.kl_coef=0.1", "reference.sync_steps=1"),  # a moving reference only RL has
], ids=["gae", "sync_steps"])
def test_sft_of_an_rl_config_saves_and_resumes(short_counting_run, tmp_path, rl_settings):
    """`rllava sft` of an RL config (a critic, a moving reference: roles SFT never builds) checkpoints, and the same
    command resumes it. It crashed saving the reference SFT has none of, or refused the resume for want of a
    critic checkpoint SFT never trains."""
    first = short_counting_run("trainer.pipeline=sft", *rl_settings, "trainer.total_steps=1", "trainer.save_freq=1")
    run_experiment(load_config(None, first))
    run = tmp_path / "default"
    assert [s for s, _ in list_checkpoints(run)] == [1]
    run_experiment(load_config(None, [*first, "trainer.total_steps=2"]))  # trainer.resume=auto: from step 1
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert load_state(run / "checkpoints" / "step_2")["step"] == 2
    assert [r["step"] for r in metrics(run)] == [1, 2]  # went on from step 1, not from the start


def test_rllava_sft_keeps_a_configs_agentic_sft_pipeline(tiny_model_factory, tmp_path, capsys):
    """`rllava sft examples/zoom_sft.yaml` (whose pipeline is agentic_sft) trains on the multi-turn demonstrations
    played through the zoom tool; it silently ran single-turn SFT on the rendered answers instead (the command
    appended trainer.pipeline=sft after the config and the user's own overrides)."""
    from rllava.tasks import make_task

    data = make_task("zoom", tmp_path / "zoom", n=6, seed=0, length=1, alphabet="AX", min_size=192, max_size=192,
                     grid=2, clutter=0)
    config = tmp_path / "zoom_sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_factory("qwen2_vl"))},
        "data": {"train_files": str(data / "train.parquet"), "batch_size": 2, "max_pixels": 12544},
        "rollout": {"max_new_tokens": 8}, "env": {"name": "tools", "tools": ["zoom"], "max_turns": 2},
        "reward": {"functions": {"exact_match": 1.0}},
        "trainer": {"pipeline": "agentic_sft", "total_steps": 1, "output_dir": str(tmp_path / "out"),
                    "progress_bar": False, "loggers": ["jsonl"]}}))
    assert main(["sft", str(config)]) == 0
    run = tmp_path / "out" / "default"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["pipeline"] == "agentic_sft"
    (row,) = metrics(run)
    assert row["demo/turns"] == 2.0 and row["demo/tool_call_rate"] == 1.0  # a zoom call, then the answer
    capsys.readouterr()


def test_rllava_sft_replaces_an_rl_pipeline_and_keeps_a_supervised_override(tmp_path):
    from rllava.cli import build_parser, train_config

    config = tmp_path / "grpo.yaml"
    config.write_text("trainer:\n  pipeline: rlvr\n")
    args = build_parser().parse_args(["sft", str(config)])
    assert train_config(args, "sft").trainer.pipeline == "sft"  # an RL config's data, trained by SFT
    config.write_text("trainer:\n  pipeline: agentic\n")
    args = build_parser().parse_args(["sft", str(config)])
    assert train_config(args, "sft").trainer.pipeline == "agentic_sft"  # an agent's warm start is multi-turn
    args = build_parser().parse_args(["sft", str(config), "trainer.pipeline=my_sft"])
    with pytest.raises(Exception, match="my_sft"):  # an override naming an unknown pipeline is not replaced
        train_config(args, "sft")
    args = build_parser().parse_args(["sft", str(config), "trainer.pipeline=sft"])
    assert train_config(args, "sft").trainer.pipeline == "sft"  # the user's own supervised override wins
    assert train_config(build_parser().parse_args(["train", str(config)])).trainer.pipeline == "agentic"


@pytest.mark.parametrize("setting, message", [
    ("trainer.total_epochs=0", "trainer.total_epochs=0: must be >= 1"),  # ran no step and reported success
    ("data.max_val_samples=-1", "data.max_val_samples=-1: must be >= 1"),  # validated on all rows but the last
    ("data.max_val_samples=0", "data.max_val_samples=0: must be >= 1"),  # no validation, so no best checkpoint
    ("trainer.log_samples=-1", "trainer.log_samples=-1: must be >= 0"),  # wrote every sample but the last
    ("trainer.val_freq=-2", "trainer.val_freq=-2: must be >= 0"),
    ("trainer.save_freq=-2", "trainer.save_freq=-2: must be >= 0"),
    ("trainer.save_every_min=-1", "trainer.save_every_min=-1.0: must be >= 0"),
    ("data.val_batch_size=0", "data.val_batch_size=0: must be >= 1"),
    ("rollout.batch_size=-1", "rollout.batch_size=-1: must be >= 0"),  # generated nothing; the update then failed
    ("actor.warmup_steps=-5", "actor.warmup_steps=-5: must be >= 0"),  # stretched the lr decay
    ("critic.warmup_steps=-5", "critic.warmup_steps=-5: must be >= 0"),
    ("reward.model_batch_size=0", "reward.model_batch_size=0: must be >= 1"),  # failed at the first scoring
])
def test_out_of_range_run_settings_fail_at_load(setting, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [setting])


def test_sliced_run_settings_still_load():
    cfg = load_config(None, ["data.max_val_samples=1", "trainer.save_every_min=0", "trainer.log_samples=0",
                             "trainer.val_freq=0", "trainer.save_freq=0", "trainer.total_epochs=1"])
    assert (cfg.data.max_val_samples, cfg.trainer.save_every_min, cfg.trainer.log_samples) == (1, 0.0, 0)
    assert load_config(None, ["data.max_val_samples=null"]).data.max_val_samples is None


def test_a_comma_list_of_numbers_on_the_command_line():
    """`trainer.profile_steps=1,3` was refused ("expected int, got str '1'") while `data.train_weights=3,1` and
    `env.tools=a,b` loaded: the items of a comma list are read as numbers where the list holds numbers."""
    cfg = load_config(None, ["trainer.total_steps=5", "trainer.profile_steps=1,3", "data.train_weights=3,1",
                             "env.tools=zoom,python", "rollout.stop=0715,</a>"])
    assert cfg.trainer.profile_steps == [1, 3] and cfg.data.train_weights == [3.0, 1.0]
    assert cfg.env.tools == ["zoom", "python"] and cfg.rollout.stop == ["0715", "</a>"]  # text stays as typed
    with pytest.raises(ConfigError, match=r"trainer.profile_steps\[1\]: expected int, got str 'x'"):
        load_config(None, ["trainer.total_steps=5", "trainer.profile_steps=1,x"])


def test_rl_in_an_sft_runs_folder_is_refused_before_loading(short_counting_run, tmp_path):
    """`rllava sft ...` then `rllava train ...` with the same trainer.experiment_name (both `default` when given by
    overrides alone): resume=auto found the SFT checkpoint and, after loading the model, failed with KeyError
    'kl_coef' (the RL pipeline's state). The other way round, SFT went on from the RL run's step and optimizer."""
    run_experiment(load_config(None, short_counting_run("trainer.pipeline=sft", "trainer.total_steps=1")))
    with pytest.raises(ConfigError, match=r"cannot resume from .*step_1: trainer.pipeline: 'sft' in the checkpoint, "
                                          r"'rlvr' now.*trainer.resume=none"):
        run_experiment(load_config(None, short_counting_run("trainer.total_steps=1")))
    sft_config = (tmp_path / "default" / "config.yaml").read_text()
    with pytest.raises(DataError):  # a failed invocation (here: no such data file) leaves the run's config alone
        run_experiment(load_config(None, short_counting_run("trainer.resume=none",
                                                            f"data.train_files={tmp_path / 'missing.parquet'}")))
    assert (tmp_path / "default" / "config.yaml").read_text() == sft_config
    run_experiment(load_config(None, short_counting_run("trainer.total_steps=1", "trainer.resume=none")))
    assert [r["step"] for r in metrics(tmp_path / "default")] == [1]
    assert load_state(tmp_path / "default" / "checkpoints" / "step_1")["config"]["trainer"]["pipeline"] == "rlvr"


@pytest.mark.parametrize("flags, message", [
    (["--n", "4", "--temperature", "-1"], "--temperature -1.0: must be >= 0 (0: greedy)"),  # 4 identical greedy samples
    (["--n", "0"], "--n 0: must be >= 1"),  # named the setting rollout.val_n, not the flag typed
])
def test_rllava_eval_names_a_bad_sampling_flag(tiny_model_factory, tmp_path, capsys, flags, message):
    from rllava.tasks import make_task

    data, model = make_task("counting", tmp_path / "data", n=4, seed=0), tiny_model_factory("qwen2_vl")
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(data), *flags]) == 2
    assert capsys.readouterr().err == f"rllava: error: {message}\n"


def test_a_negative_validation_temperature_fails_at_load():
    """rollout.val_temperature < 0 sampled greedily: val_n > 1 then reported pass@k of n identical samples."""
    with pytest.raises(ConfigError, match=r"rollout\.val_temperature=-0\.5: must be >= 0\.0"):
        load_config(None, ["rollout.val_temperature=-0.5"])


def test_sft_skip_bad_rows_passes_over_a_row_without_a_demonstration(tiny_model_factory, tmp_path):
    """data.skip_bad_rows=true drops rows with missing or broken fields: under SFT a row whose solution (the
    response_template's field) is null is one, yet the run stopped on it before training."""
    rows = [{"prompt": "1 + 1 =", "answer": "2", "solution": "1 + 1 = 2"},
            {"prompt": "2 + 2 =", "answer": "4", "solution": None}, {"prompt": "3 + 3 =", "answer": "6", "solution": "6"}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = [f"model.path={tiny_model_factory('qwen2')}", f"data.train_files={data}", "data.batch_size=2",
            "trainer.pipeline=sft", "data.response_template={{ solution }}", "trainer.total_steps=2",
            f"trainer.output_dir={tmp_path}",
            "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "data.shuffle=false"]
    with pytest.raises(DataError, match=r"train\.jsonl, row 1.*a field it prints is null"):
        run_experiment(load_config(None, over))
    run_experiment(load_config(None, [*over, "data.skip_bad_rows=true", "trainer.resume=none"]))
    state = load_state(tmp_path / "default" / "checkpoints" / "step_2")
    assert state["loader"]["skipped"] == [1]
    # step 1 drew rows 0 and 2 (row 1 passed over), step 2 rows 0 and 2 again: epoch 1, position 3
    assert (state["loader"]["epoch"], state["loader"]["position"]) == (1, 3)
    assert [r["step"] for r in metrics(tmp_path / "default")] == [1, 2]


def test_rllava_eval_reward_flag_scores_rows_of_a_trained_per_source_set(tiny_model_factory, tmp_path, capsys):
    """`--reward` scores every row, also where the checkpoint's own settings route that row's data source to a set
    of its own (reward.by_source): those rows were silently scored by the trained set instead."""
    import shutil

    from rllava.tasks import make_task

    data = make_task("counting", tmp_path / "counting", n=8, seed=0)  # data source: counting (the folder's name)
    rewards = tmp_path / "constant.py"
    rewards.write_text("def one(response, answer, **row):\n    return 1.0\n\n\n"
                       "def zero(response, answer, **row):\n    return 0.0\n")
    one, zero = f"{rewards}:one", f"{rewards}:zero"
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    shutil.copytree(tiny_model_factory("qwen2_vl"), ckpt / "model")
    # ... and its reward model (here a folder since moved away) would have been loaded and added to the score
    trained = {"reward": {"functions": {"count": 1.0}, "by_source": {"counting": {zero: 1.0}}, "kwargs": {zero: {}},
                          "model": str(tmp_path / "moved_reward_model")},
               "data": {"template": "{{ prompt }} Answer with a number."}}
    (ckpt / "config.yaml").write_text(yaml.safe_dump(trained))
    capsys.readouterr()
    assert main(["eval", "--model", str(ckpt / "model"), "--data", str(data), "--reward", one,
                 "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] >= 1 and result["eval/reward"] == 1.0


def test_skip_bad_rows_drops_a_validation_image_that_cannot_be_decoded(short_counting_run, tiny_model_factory,
                                                                       tmp_path, capsys):
    """A truncated image passes the header-only check at load and fails when decoded: the train loader drops such
    a row under data.skip_bad_rows=true, but validation (and `rllava eval`) stopped the run on it."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "val"
    folder.mkdir()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "ok.png")
    whole = (folder / "ok.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    rows = [{"prompt": "<image>How many?", "answer": "1", "images": ["ok.png"]},
            {"prompt": "<image>How many?", "answer": "2", "images": ["cut.png"]},
            {"prompt": "<image>How many?", "answer": "3", "images": ["ok.png"]}]
    val = folder / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = short_counting_run(f"data.val_files={val}", "trainer.total_steps=1", "trainer.save_freq=1")
    with pytest.raises(DataError, match=r"val\.jsonl, row 1, field 'images': cannot decode image"):
        run_experiment(load_config(None, over))
    run_experiment(load_config(None, [*over, "data.skip_bad_rows=true", "data.max_val_samples=2"]))
    samples = [json.loads(ln) for ln in (tmp_path / "default" / "samples.jsonl").read_text().splitlines()]
    assert sorted((s["step"], s["answer"]) for s in samples) == [(0, "1"), (0, "3"), (1, "1"), (1, "3")]  # 2 good rows
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_model_factory("qwen2_vl")), "--data", str(val), "--reward", "count",
                 "--max-new-tokens", "2", "data.skip_bad_rows=true"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2


def test_a_plugin_file_named_by_an_override_is_recorded_absolute(tmp_path, monkeypatch):
    """load_config makes plugin paths absolute, but only a config file's: `plugins=[my_reward.py]` on the command line
    stayed relative in the run's and each checkpoint's config.yaml, which `rllava eval` of that checkpoint (and a
    resume) from another folder then read as a missing plugin."""
    (tmp_path / "my_reward.py").write_text("def reward(response, answer, **row):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    for given in ("plugins=[my_reward.py]", "plugins=my_reward.py"):
        assert load_config(None, [given]).plugins == [str(tmp_path / "my_reward.py")]
    assert load_config(None, ["plugins=[rllava.rewards, ./my_reward.py]"]).plugins == [
        "rllava.rewards", str(tmp_path / "my_reward.py")]  # a module name stays a module name
    from rllava.config import import_plugins, to_yaml

    recorded = tmp_path / "outputs" / "run" / "config.yaml"  # what the run writes, where it writes it
    recorded.parent.mkdir(parents=True)
    recorded.write_text(to_yaml(load_config(None, ["plugins=[my_reward.py]"])))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    import_plugins(load_config(str(recorded)).plugins)  # was: plugin file '.../elsewhere/my_reward.py' not found
