"""`rllava check`: the run's sizes without loading weights, and the errors a run would stop on, in one line."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rllava.cli import main
from rllava.config import load_config
from rllava.data.rows import DataError
from rllava.pipelines.preflight import preflight


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=30, seed=0)


def overrides(model, data, *extra):
    return [f"model.path={model}", f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
            "data.template={{ prompt }} Answer with a number.", "reward.functions={count: 1.0}", "data.batch_size=4",
            "rollout.n=8", "actor.mini_batch_size=16", "trainer.total_steps=100", "trainer.total_epochs=2", *extra]


def test_report_matches_the_run(tiny_model_factory, counting, monkeypatch):
    from transformers import AutoModelForImageTextToText, PreTrainedModel

    model = tiny_model_factory("qwen2_vl")
    loads = []
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: loads.append(a)))
    report = preflight(load_config(None, overrides(model, counting, "algorithm.kl_coef=0.1")))
    assert loads == []  # no weights were read
    monkeypatch.undo()
    real = AutoModelForImageTextToText.from_pretrained(model)
    assert report["parameters"] == real.num_parameters() and report["vision"] and report["model_type"] == "qwen2_vl"
    assert report["train"]["prompts"] == 24 and report["val"]["prompts"] == 3 and report["train"]["bad_rows"] == 0
    assert report["steps"] == 12  # 2 epochs of ceil(24 / 4) batches, before total_steps=100
    assert report["per_step"] == {"prompts": 4, "sequences": 32, "optimizer_steps": 2}
    assert report["roles"] == ["reference"]
    assert 20 < report["train"]["prompt_tokens_median"] <= report["train"]["prompt_tokens_max"]
    assert report["reward_of_answers"] == 1.0  # the count reward gives the rows' own answers full marks


def test_cli_check_prints_the_report_or_one_error_line(tiny_model_factory, counting, tmp_path, capsys):
    model = tiny_model_factory("qwen2_vl")
    assert main(["check", *overrides(model, counting)]) == 0
    assert "24 prompts" in capsys.readouterr().out
    rows = pq.read_table(counting / "train.parquet").to_pylist()
    rows[5]["images"] = ["images/missing.png"]

    pq.write_table(pa.Table.from_pylist(rows), counting / "bad.parquet")  # beside the images it refers to
    bad = [o if not o.startswith("data.train_files") else f"data.train_files={counting / 'bad.parquet'}"
           for o in overrides(model, counting)]
    assert main(["check", *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rllava: error:") and "row 5" in err and "missing.png" in err
    assert main(["check", *overrides(model, counting, "algorithm.demonstrations=switch")]) == 2  # no sft_coef
    assert "sft_coef" in capsys.readouterr().err


def test_a_reward_that_always_raises_is_caught(tiny_model_factory, counting, tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("def reward(response, answer, extra_arg, **row):\n    return 1.0\n")  # a signature mistake
    over = overrides(tiny_model_factory("qwen2_vl"), counting) + [f"reward.functions={{'{plugin}:reward': 1.0}}"]
    assert main(["check", *over]) == 2
    err = capsys.readouterr().err
    assert "raised on each of 4 train rows" in err and "extra_arg" in err



def test_best_metric_and_keep_last_are_checked(tiny_model_factory, counting, capsys):
    """A misspelt trainer.best_metric (a run found it at the first validation, maybe after the last step) and
    trainer.keep_last < 1 (every checkpoint deleted) are errors of `rllava check`."""
    model = tiny_model_factory("qwen2_vl")
    assert main(["check", *overrides(model, counting, "trainer.best_metric=val/pass@2")]) == 2
    assert "trainer.best_metric='val/pass@2' is not among the validation metrics" in capsys.readouterr().err
    assert main(["check", *overrides(model, counting, "trainer.best_metric=val/pass@2", "rollout.val_n=2")]) == 0
    capsys.readouterr()
    assert main(["check", *overrides(model, counting, "trainer.keep_last=0")]) == 2
    assert "trainer.keep_last=0: must be >= 1" in capsys.readouterr().err


def test_a_judge_is_checked_without_its_weights(tiny_model_factory, counting, capsys):
    """reward.model as an LM judge: its verdicts must be one token each, and every row must have the fields its
    template reads; both are found by `rllava check`."""
    over = overrides(tiny_model_factory("qwen2_vl"), counting, f"reward.model={tiny_model_factory('qwen2')}")
    assert main(["check", *over]) == 2  # the default verdicts, yes/no, are two tokens each for the offline tokenizer
    assert "'yes' is 2 tokens" in capsys.readouterr().err
    digits = [*over, "reward.judge_labels={'1': 1.0, '0': 0.0}"]
    assert main(["check", *digits]) == 0
    assert "reward model" in capsys.readouterr().out
    assert main(["check", *digits, "reward.judge_template='{{ prompt }} {{ response }} {{ rubric }}'"]) == 2
    err = capsys.readouterr().err
    assert "train.parquet, row 0" in err and "rubric" in err


@pytest.mark.parametrize("setting,typo,hint", [
    ("algorithm.policy_loss", "pp0", "did you mean 'ppo'"), ("algorithm.loss_agg_mode", "token_mean", "'token-mean'"),
    ("algorithm.kl_estimator", "low_var_kl", "known: abs"), ("algorithm.reward_shaping", "[overlong]", "overlong_penalty"),
    ("env.tools", "[zom]", "'zoom'"), ("actor.optimizer", "adam", "'adamw'"), ("rollout.engine", "vlm", "'vllm'"),
    ("algorithm.sft_token_weight", "chord", "chord_phi"), ("env.call_format", "hermes", "known: json")])
def test_a_misspelt_name_fails_in_rllava_check_before_the_model_is_read(setting, typo, hint, capsys):
    """Every setting that names a registry entry is checked up front (it used to fail at the first update)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "counting_grpo.yaml"
    code = main(["check", str(example), "model.path=/nonexistent", f"{setting}={typo}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{setting}: unknown" in err and hint in err, err


@pytest.mark.parametrize("pipeline,field", [("agentic_sft", "demo_turns"), ("sft", "data.response_template")])
def test_a_bad_demonstration_fails_before_training_naming_file_row_and_field(pipeline, field, tiny_model_factory,
                                                                               tmp_path, capsys):
    """A demonstration that cannot be read is found by `rllava check` and at the start of a run (before step 1),
    not when its batch comes up: the last of 10 rows here, which a batch of 2 reaches at step 5."""
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    data = make_task("calculate", tmp_path / "calculate", n=12, seed=0)
    rows = pq.read_table(data / "train.parquet").to_pylist()
    rows[-1]["demo_turns"] = "<answer>3</answer>"  # one turn's text, not a list of turns
    rows[-1]["solution"] = None
    for r in rows[:-1]:
        r["solution"] = r["answer"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    args = [f"model.path={tiny_model_factory('qwen2')}", f"data.train_files={tmp_path / 'bad.parquet'}", "data.val_files=",
            "data.batch_size=2", "data.shuffle=false", f"trainer.pipeline={pipeline}", "env.name=tools", "env.tools=[python]",
            "env.call_format=tags", "data.response_template={{ solution.strip() }}", f"trainer.output_dir={tmp_path}",
            "trainer.total_steps=5", "trainer.loggers=[jsonl]", "trainer.progress_bar=false"]
    where = f"{tmp_path / 'bad.parquet'}, row {len(rows) - 1}, field '{field}'"
    assert main(["check", *args]) == 2
    assert capsys.readouterr().err.startswith(f"rllava: error: {where}")
    with pytest.raises(DataError, match=f"^{re.escape(where)}"):
        run_experiment(load_config(None, args))
    assert not (tmp_path / "default" / "metrics.jsonl").exists()  # no step ran


@pytest.mark.parametrize("override, message", [
    ("actor.lr_scheduler=cosin", "<overrides>: actor.lr_scheduler='cosin' is not one of constant, cosine, linear; "
                                 "did you mean 'cosine'?"),
    ("actor.betas=[0.9]", "<overrides>: actor.betas=[0.9]: give two numbers in [0, 1)"),
    ("trainer.device=cdua", "trainer.device='cdua' is not a device: give auto, cpu, cuda or cuda:N"),
    ("model.attn_implementation=sdp", "model.attn_implementation='sdp' is not one of eager, "),
    ("trainer.loggers=[console,tensorbaord]", "trainer.loggers='tensorbaord' is not one of console, jsonl, tensorboard, "
                                              "wandb; did you mean 'tensorboard'?"),
    ("data.train_files=", "data.train_files is empty: give the training prompts' file(s)"),  # was KeyError: 'train'
])
def test_check_fails_where_a_run_would(tiny_model_factory, counting, capsys, override, message):
    """`rllava check` said ok to each of these; `rllava train` then failed after loading the model, or (a misspelt
    logger) quietly wrote nothing."""
    model = tiny_model_factory("qwen2_vl")
    capsys.readouterr()  # (the model's writing bar, if this test made it)
    assert main(["check", *overrides(model, counting, override)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rllava: error: {message}") and err.count("\n") == 1, err


def test_accepted_attention_implementations_and_devices():
    from rllava.pipelines.run import check_attn_implementation, parse_device

    for name in ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention",
                 "kernels-community/flash-attn", "kernels-community/flash-attn@v2:flash_attn_func"):
        check_attn_implementation(name)
    assert parse_device("auto") is None and parse_device("cuda:1").index == 1 and parse_device("cpu").type == "cpu"


def test_check_names_a_model_path_that_is_not_a_model_folder(tiny_model_factory, counting, tmp_path, capsys):
    """A weights file, a broken config.json, a folder without processor files: OSError tracebacks from transformers."""
    import shutil

    model = tiny_model_factory("qwen2_vl")
    weights = model / "model.safetensors"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(model / name, no_processor / name)
    capsys.readouterr()
    for path, message in [(weights, f"model.path '{weights}' is a file: give the HF model folder"),
                          (broken, f"model.path '{broken}': cannot load its config: "),
                          (no_processor, f"'{no_processor}': cannot load its processor")]:
        assert main(["check", *overrides(model, counting, f"model.path={path}")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rllava: error: {message}") and err.count("\n") == 1, err
