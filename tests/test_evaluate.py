"""Evaluation: the pass@k estimator by hand, `rllava eval` (greedy, and n samples with mean@n and pass@k),
and pass@k in a training run's validation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rllava.pipelines.evaluate import majority_correct, metric_names, pass_at_k, pass_at_k_sums, task_overrides
from rllava.tasks import TASKS


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # C(3, 2) / C(4, 2)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(8, 3, 3) == pytest.approx(1 - math.comb(5, 3) / math.comb(8, 3))
    solved = [[True, False, False, False], [False] * 4, [True] * 4]
    assert pass_at_k_sums(solved, 4) == pytest.approx({"pass@1": 1.25, "pass@2": 1.5, "pass@4": 2.0})
    assert pass_at_k_sums([[True, False, True]], 3) == pytest.approx({"pass@1": 2 / 3, "pass@2": 1.0, "pass@3": 1.0})
    assert pass_at_k_sums([[True], [False]], 1) == {}  # one sample a prompt: accuracy says it all
    assert pass_at_k_sums([], 2) == {"pass@1": 0.0, "pass@2": 0.0}  # the same keys on a rank with no prompts


def test_majority_vote_by_hand():
    assert majority_correct(["3", "3", "4"], [True, True, False]) == 1.0
    assert majority_correct(["4", "3", "4"], [False, True, False]) == 0.0  # right once, outvoted
    assert majority_correct(["3", "4"], [True, False]) == 0.5  # a tie: each answer half the time
    assert majority_correct(["3", "4", "5", "5", "4"], [True, False, False, False, False]) == 0.0
    assert majority_correct(["a", "b", "c"], [False, False, True]) == pytest.approx(1 / 3)  # three-way tie
    # Right answers written differently are one answer: 2 votes for it against 1 for each wrong answer.
    assert majority_correct(["1/2", "0.5", "3", "4"], [True, True, False, False]) == 1.0
    # Together they outvote a wrong answer given twice (3 against 2); counted apart, "3" would win.
    assert majority_correct(["1/2", "0.5", "\\frac{1}{2}", "3", "3"], [True, True, True, False, False]) == 1.0
    # A sample judged wrong that gives a right sample's answer (wrong on format) votes for that answer: 3 to 2.
    assert majority_correct(["2", "2", "2", "5", "5"], [True, False, False, False, False]) == 1.0
    assert majority_correct(["5", "5"], [False, False]) == 0.0
    assert majority_correct(["1/2", "0.5", "3", "3"], [True, True, False, False]) == 0.5  # 2 against 2


@pytest.fixture(scope="module")
def counting(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("eval") / "counting", n=60, seed=0)


def test_rllava_eval_greedy_and_with_samples(tiny_model_factory, counting, capsys):
    from rllava.cli import main

    model = tiny_model_factory("qwen2_vl")
    base = ["eval", "--model", str(model), "--data", str(counting), "--reward", "count", "--max-new-tokens", "4"]
    assert main(base) == 0
    greedy = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert greedy["n"] == 6 and 0.0 <= greedy["eval/accuracy"] <= 1.0  # the test split: 10 % of 60
    assert not any(k.startswith("eval/pass@") for k in greedy)
    assert main([*base, "--n", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    sampled = json.loads(out[-1])
    assert "pass@1" in out[0] and "pass@4" in out[0] and "maj@4" in out[0]  # the table's header
    p1, p2, p4 = (sampled[f"eval/pass@{k}"] for k in (1, 2, 4))
    assert 0.0 <= sampled["eval/maj@4"] <= p4  # a majority answer is right only where some sample is
    assert p1 == pytest.approx(sampled["eval/accuracy"])  # 0/1 accuracy: pass@1 is mean@n
    assert p1 <= p2 <= p4 <= 1.0
    assert main([*base, "--n", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == sampled  # seeded: the same again
    # number_format (any whole number): a random model's one sampled token is a number now and then
    base = ["eval", "--model", str(model), "--data", str(counting), "--reward", "number_format", "--max-new-tokens", "1"]
    assert main([*base, "--n", "4"]) == 0
    loose = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < loose["eval/pass@1"] < loose["eval/pass@4"] and loose["eval/pass@1"] <= loose["eval/pass@2"] <= 1


def test_training_validation_reports_pass_at_k(tiny_model_factory, counting, tmp_path):
    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment

    cfg = load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={counting / 'train.parquet'}",
        f"data.val_files={counting / 'val.parquet'}", "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=4",
        "rollout.val_n=2", "rollout.val_temperature=1.0", "reward.functions={count: 1.0}", "trainer.total_steps=1",
        f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]"])
    run_experiment(cfg)
    first = json.loads((tmp_path / "default" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["val/pass@1"] == pytest.approx(first["val/accuracy"]) and first["val/pass@2"] >= first["val/pass@1"]
    # What the up-front check of trainer.best_metric accepts is exactly what validation reports.
    assert sorted(metric_names(2, ["counting"])) == sorted(k for k in first if k.startswith("val/"))


def test_best_metric_is_checked_against_the_metrics_validation_will_report():
    """trainer.best_metric is checked before training (it used to fail at the first validation, which may come
    after the last step and before the final checkpoint): pass@k and maj@n need rollout.val_n, a source's own
    metrics several sources, the agent's a multi-turn environment."""
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.evaluate import check_best_metric

    def check(metric: str, sources: list[str], *extra: str) -> None:
        check_best_metric(load_config(None, [f"trainer.best_metric={metric}", *extra]), sources)

    check("val/accuracy", ["counting"])
    check("val/reward", ["counting"])
    with pytest.raises(ConfigError, match=r"trainer.best_metric='val/pass@1' is not among.*need rollout.val_n > 1"):
        check("val/pass@1", ["counting"])
    check("val/pass@4", ["counting"], "rollout.val_n=4")
    check("val/maj@4", ["counting"], "rollout.val_n=4")
    with pytest.raises(ConfigError, match="'val/pass@8' is not among"):
        check("val/pass@8", ["counting"], "rollout.val_n=4")
    with pytest.raises(ConfigError, match=r"'val/acuracy' is not among the validation metrics: \['val/reward'"):
        check("val/acuracy", ["counting"])
    check("val/hard/accuracy", ["counting", "hard", "hard"])
    with pytest.raises(ConfigError, match="'val/hard/accuracy' is not among"):
        check("val/hard/accuracy", ["hard", "hard"])  # one source: no per-source keys
    check("val/agent/tool_call_rate", ["zoom"], "env.name=tools", "trainer.pipeline=agentic")
    check("val/agent/turns", ["zoom"], "env.name=tools", "trainer.pipeline=agentic_sft")
    with pytest.raises(ConfigError, match="'val/agent/turns' is not among"):
        check("val/agent/turns", ["zoom"])
    for pipeline in ("rlvr", "sft"):  # they ignore env.name: single-turn validation, no agent metrics
        with pytest.raises(ConfigError, match="'val/agent/turns' is not among.*need trainer.pipeline=agentic"):
            check("val/agent/turns", ["zoom"], "env.name=tools", "env.tools=[python]", f"trainer.pipeline={pipeline}")
    check("val/nothing", [])  # no validation prompts: no best to pick


def test_rllava_eval_runs_multi_turn_episodes_with_env_overrides(tiny_model_factory, tmp_path, capsys):
    from rllava.cli import main
    from rllava.tasks import make_task

    zoom = make_task("zoom", tmp_path / "zoom", n=20, seed=0, length=1, alphabet="AX", min_size=192, max_size=192,
                     grid=2, clutter=0)
    base = ["eval", "--model", str(tiny_model_factory("qwen2_vl")), "--data", str(zoom), "--reward", "exact_match",
            "--max-new-tokens", "8", "data.max_pixels=12544"]
    assert main([*base, "env.name=tools", "env.tools=[zoom]", "env.max_turns=2"]) == 0
    agentic = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert agentic["n"] == 2 and 1.0 <= agentic["eval/agent/turns"] <= 2.0  # the episode metrics of agentic RL
    assert main(base) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval/agent/turns" not in single and single["n"] == 2


def test_validation_on_two_datasets_reports_each(tiny_model_factory, counting, tmp_path):
    """Validation files from two task folders: overall metrics plus each one's, named after its folder; a row's
    own data_source column wins."""
    import pandas as pd

    from rllava.config import load_config
    from rllava.data.dataset import data_source
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    assert data_source("/x/counting/val.parquet") == "counting" and data_source("gsm8k.jsonl") == "gsm8k"
    other = make_task("counting", tmp_path / "hard", n=40, seed=1, difficulty="hard")
    tagged = other / "tagged.parquet"  # `other`'s val rows (images relative to that folder) with their own source column
    pd.read_parquet(other / "val.parquet").assign(data_source="mine").to_parquet(tagged)
    cfg = load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={counting / 'train.parquet'}",
        f"data.val_files={counting / 'val.parquet'},{other / 'val.parquet'},{tagged}", "data.batch_size=2",
        "rollout.n=2", "rollout.max_new_tokens=1", "rollout.val_temperature=1.0", "trainer.total_steps=1",
        "reward.functions={number_format: 1.0}",  # a random model's one sampled token is a number now and then
        f"trainer.output_dir={tmp_path / 'runs'}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]"])
    run_experiment(cfg)
    first = json.loads((tmp_path / "runs" / "default" / "metrics.jsonl").read_text().splitlines()[0])
    assert sorted(metric_names(1, ["counting", "hard", "mine"])) == sorted(k for k in first if k.startswith("val/"))
    n = {s: len(pd.read_parquet(f)) for s, f in [("counting", counting / "val.parquet"), ("hard", other / "val.parquet"),
                                                 ("mine", tagged)]}
    weighted = sum(first[f"val/{s}/accuracy"] * k for s, k in n.items()) / sum(n.values())
    assert first["val/accuracy"] == pytest.approx(weighted)  # the overall mean is over all prompts
    assert all(0.0 <= first[f"val/{s}/accuracy"] <= 1.0 and f"val/{s}/reward" in first for s in n)


def test_best_metric_picks_the_kept_checkpoint(tiny_model_factory, counting, tmp_path):
    """Validate and save every step, keep the last one and the best by trainer.best_metric."""
    from rllava.config import ConfigError, load_config
    from rllava.pipelines.run import run_experiment

    over = [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={counting / 'train.parquet'}",
            f"data.val_files={counting / 'val.parquet'}", "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=1",
            "rollout.val_n=2", "rollout.val_temperature=1.0", "reward.functions={number_format: 1.0}",
            "trainer.total_steps=4", "trainer.val_freq=1", "trainer.save_freq=1", "trainer.keep_last=1",
            "trainer.best_metric=val/pass@2", f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]"]
    result = run_experiment(load_config(None, over))
    rows = [json.loads(ln) for ln in (tmp_path / "default" / "metrics.jsonl").read_text().splitlines()]
    # The best among the saved steps: step 0 (the model before training) has no checkpoint.
    scores = [(r["val/pass@2"], -r["step"]) for r in rows if "val/pass@2" in r and r["step"] > 0]
    best_step = -max(scores)[1]  # the first step with the highest score
    kept = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "default" / "checkpoints").iterdir())
    assert kept == sorted({best_step, 4}) and result["best_val_accuracy"] == max(scores)[0]
    with pytest.raises(ConfigError, match=r"trainer.best_metric='val/pass@8' is not among the validation metrics"):
        run_experiment(load_config(None, [*over, "trainer.best_metric=val/pass@8", "trainer.total_steps=1",
                                          "trainer.experiment_name=bad"]))


def test_resolve_split_names_the_split_of_each_kind_of_folder(tmp_path):
    from rllava.pipelines.evaluate import resolve_split

    task = tmp_path / "task"
    task.mkdir()
    (task / "test.parquet").write_text("")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}")
    assert resolve_split(str(task), "test") == str(task / "test.parquet")  # rllava make-task output
    assert resolve_split(str(repo), "test") == f"{repo}@test"  # a downloaded dataset repo
    assert resolve_split(str(saved), "test") == str(saved)  # one saved Dataset: no splits
    assert resolve_split(f"{repo}@train", "test") == f"{repo}@train"  # an explicit split wins
    assert resolve_split(str(task / "test.parquet"), "val") == str(task / "test.parquet")
    assert resolve_split("hiyouga/geometry3k", "test") == "hiyouga/geometry3k@test"  # a hub dataset
    assert resolve_split("hiyouga/geometry3k@train", "test") == "hiyouga/geometry3k@train"
    assert resolve_split("data/x.jsonl", "test") == "data/x.jsonl"  # a file name, even one that does not exist


def test_rllava_eval_table_has_a_row_per_dataset(tiny_model_factory, counting, tmp_path, capsys):
    from rllava.cli import main
    from rllava.tasks import make_task

    other = make_task("counting", tmp_path / "hard", n=20, seed=1, difficulty="hard")
    assert main(["eval", "--model", str(tiny_model_factory("qwen2_vl")), "--data",
                 f"{counting / 'test.parquet'},{other / 'test.parquet'}", "--reward", "number_format",
                 "--max-new-tokens", "1", "--n", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[1].split()[0] == str(tiny_model_factory("qwen2_vl"))[-48:]  # the whole set, then each dataset
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"counting", "hard"}
    assert [int(rows[s][1]) for s in ("counting", "hard")] == [6, 2]  # each test split's prompts
    assert float(rows["hard"][2]) == pytest.approx(result["eval/hard/accuracy"], abs=1e-3)
    assert lines[0].split()[-1] == "maj@2"


def test_rllava_eval_compares_several_models(tiny_model_factory, counting, tmp_path, capsys):
    """A glob of a run's checkpoints (natural order) and a comma list: one table, a row and a JSON line per model; the
    same weights under two names score the same (each model gets the same prompts and sampling seed)."""
    import shutil

    import torch

    from rllava.cli import main
    from rllava.pipelines.evaluate import model_folders

    model = tiny_model_factory("qwen2_vl")
    for step in (100, 20):
        shutil.copytree(model, tmp_path / "run" / "checkpoints" / f"step_{step}" / "model")
        torch.save({"step": step}, tmp_path / "run" / "checkpoints" / f"step_{step}" / "trainer_state.pt")  # complete
    # A checkpoint being written (or left by a crash mid-save) is no model of the run's.
    shutil.copytree(model, tmp_path / "run" / "checkpoints" / "step_120.tmp" / "model")
    pattern = str(tmp_path / "run" / "checkpoints" / "step_*[0-9]" / "model")
    steps = [tmp_path / "run" / "checkpoints" / f"step_{s}" / "model" for s in (20, 100)]
    assert model_folders(pattern) == [str(p) for p in steps]  # step_20 first, not by string order
    assert model_folders(f"{model}, {pattern}") == [str(model), *map(str, steps)]
    assert model_folders(str(tmp_path / "run")) == [str(p) for p in steps]  # a run folder: its checkpoints
    from rllava.config import ConfigError

    with pytest.raises(ConfigError, match="matches no folder"):  # `rllava eval` prints it without a traceback
        model_folders(str(tmp_path / "nothing_*"))
    assert main(["eval", "--model", pattern, "--data", str(counting), "--reward", "number_format",
                 "--max-new-tokens", "2", "--n", "2", "--max-samples", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = [json.loads(line) for line in lines[-2:]]
    assert [r["model"] for r in results] == [str(p) for p in steps]
    table = lines[lines.index(next(line for line in lines if line.startswith("model"))):][:3]
    assert [row.split()[0] for row in table[1:]] == [str(p)[-48:] for p in steps]
    assert results[0]["eval/accuracy"] == results[1]["eval/accuracy"]
    assert results[0]["eval/response_length"] == results[1]["eval/response_length"]
    assert float(table[1].split()[2]) == pytest.approx(results[0]["eval/accuracy"], abs=1e-3)



def test_rllava_eval_takes_its_settings_from_the_run_then_the_task(tiny_model_factory, counting, tmp_path, capsys):
    """Evaluating a run's checkpoints uses the settings they were trained with (template, reward, max_new_tokens; not its cap on
    validation rows, nor its LoRA: a checkpoint's model folder is merged), and a bare model on a make-task folder its task.yaml (template, reward, environment, stop
    strings): each equals the same evaluation with those settings written out as flags and overrides."""
    import shutil

    from rllava.cli import main
    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    def last_json(*args: str) -> tuple[dict, str]:
        assert main(["eval", *args, "--n", "2"]) == 0
        out = capsys.readouterr().out
        return json.loads(out.strip().splitlines()[-1]), out

    template = "{{ prompt }} Reply with digits."
    run = run_experiment(load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={counting / 'train.parquet'}",
        "data.val_files=", f"data.template={template}", "data.max_val_samples=2", "data.batch_size=2", "rollout.n=2",
        "rollout.max_new_tokens=3", "reward.functions={number_format: 1.0}", "trainer.total_steps=1", "model.lora_rank=4",
        f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false", "trainer.loggers=[jsonl]"]))
    from_run, out = last_json("--model", run["run_dir"], "--data", str(counting))
    own = Path(run["final_model"]).parent / "config.yaml"  # the checkpoint's own settings
    assert f"settings from {own}" in out and "Reply with digits." in out
    bare = shutil.copytree(run["final_model"], tmp_path / "bare")  # outside the run: no config.yaml to find
    explicit, out = last_json("--model", str(bare), "--data", str(counting), "--reward", "number_format",
                              "--max-new-tokens", "3", "--template", template)
    assert "settings from" not in out and from_run["n"] == explicit["n"] == 6  # every test row, not the run's 2
    assert {**from_run, "model": ""} == {**explicit, "model": ""} and from_run["eval/response_length"] <= 3

    calculate = make_task("calculate", tmp_path / "calculate", n=20, seed=0, terms=2, max_value=99)
    model = str(tiny_model_factory("qwen2"))
    from_task, _ = last_json("--model", model, "--data", str(calculate), "--max-new-tokens", "24")
    explicit, _ = last_json("--model", model, "--data", str(calculate), "--max-new-tokens", "24", "--reward", "count",
                            "--template", TASKS.entry("calculate").meta["template"], "env.name=tools",
                            "env.tools=[python]", "env.call_format=tags", "env.observation_role=raw",
                            'env.observation_template="\\n<output>\\n{text}\\n</output>\\n"', "env.max_turns=2",
                            "rollout.stop=['</python>']")
    assert "eval/agent/turns" in from_task and from_task == explicit
    cfg = load_config(None, task_overrides(str(calculate)))  # each of task.yaml's settings arrives as written
    meta = TASKS.entry("calculate").meta
    assert cfg.data.template == meta["template"] and cfg.reward.functions == meta["reward"]
    assert cfg.rollout.stop == ["</python>"] and all(getattr(cfg.env, k) == v for k, v in meta["env"].items())


def test_task_overrides_find_the_task_folders_own_corpus(tmp_path, monkeypatch):
    """task.yaml's corpus path is relative to where make-task ran; evaluated from elsewhere, the folder's own file."""
    from rllava.config import load_config
    from rllava.tasks import make_task

    monkeypatch.chdir(tmp_path)
    make_task("search", "data/search", n=4, seed=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(None, task_overrides("../data/search"))
    assert Path(cfg.env.corpus_path).resolve() == tmp_path / "data" / "search" / "corpus.jsonl"
    assert cfg.rollout.stop == ["</search>"] and cfg.env.tools == ["search"]


def test_a_broken_task_yaml_is_one_error_line(tiny_model_factory, tmp_path, capsys):
    """`rllava eval --data FOLDER` read its task.yaml unguarded: a YAML traceback."""
    from rllava.cli import main
    from rllava.config import ConfigError

    model = tiny_model_factory("qwen2_vl")
    capsys.readouterr()  # (the model's writing bar, if this test made it)
    (tmp_path / "task.yaml").write_text("data: {template: [\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'task.yaml'}: line 2, column 1: invalid YAML"):
        task_overrides(str(tmp_path))
    assert main(["eval", "--model", str(model), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rllava: error: {tmp_path / 'task.yaml'}: line 2") and err.count("\n") == 1
    for text, message in [("data: 5\n", "data must be a mapping of settings, got 5"),
                          ("env: [a]\n", r"env must be a mapping of settings, got \['a'\]"),
                          ("- data\n", r"the top level must be a mapping")]:
        (tmp_path / "task.yaml").write_text(text)
        with pytest.raises(ConfigError, match=f"task.yaml: {message}"):
            task_overrides(str(tmp_path))
    (tmp_path / "task.yaml").write_text("data: {template: '{{ prompt }} #1'}\nreward:\nrollout: {stop: ['</a>']}\n")
    assert task_overrides(str(tmp_path)) == ["data.template='{{ prompt }} #1'", "rollout.stop=[</a>]"]


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--max-samples"])
def test_rllava_eval_zero_is_an_error_not_the_default(tiny_model_factory, counting, flag, capsys):
    """`x or default` replaced 0 by 128 new tokens, or by every row."""
    from rllava.cli import main

    model = tiny_model_factory("qwen2_vl")
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(counting), flag, "0"]) == 2
    assert capsys.readouterr().err == f"rllava: error: {flag} 0: must be >= 1\n"


def test_rllava_eval_names_a_model_file(tiny_model_factory, counting, capsys):
    from rllava.cli import main

    weights = tiny_model_factory("qwen2_vl") / "model.safetensors"
    capsys.readouterr()
    assert main(["eval", "--model", str(weights), "--data", str(counting)]) == 2
    assert capsys.readouterr().err.startswith(f"rllava: error: model.path '{weights}' is a file")


def test_rllava_eval_keeps_the_model_path_and_template_as_typed(tiny_model_factory, counting, tmp_path, capsys):
    """The overrides `rllava eval` builds from --model and --template were YAML: a ' #' began a comment."""
    import shutil

    from rllava.cli import main

    model = shutil.copytree(tiny_model_factory("qwen2_vl"), tmp_path / "run #2")
    assert main(["eval", "--model", str(model), "--data", str(counting), "--max-samples", "1", "--max-new-tokens", "1",
                 "--template", "{{ prompt }} #1 answer with a number"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["n"] == 1 and "#1 answer with a number" in out


def test_a_glob_of_checkpoints_skips_unfinished_and_set_aside_ones(tmp_path):
    """`--model 'RUN/checkpoints/step_*/model'` (the form --help suggests) took a step_N.tmp still being written (or
    left by a crash mid-save); a wider pattern took the checkpoints set aside in checkpoints/abandoned/ too."""
    from rllava.config import ConfigError
    from rllava.pipelines.evaluate import model_folders

    ckpts = tmp_path / "run" / "checkpoints"
    for folder in ("step_2", "step_4.tmp", "abandoned/20250101-000000-after_step_0/step_3"):
        (ckpts / folder / "model").mkdir(parents=True)
    assert model_folders(str(ckpts / "step_*" / "model")) == [str(ckpts / "step_2" / "model")]
    set_aside = str(ckpts / "abandoned" / "20250101-000000-after_step_0" / "step_3" / "model")
    assert model_folders(str(ckpts / "abandoned" / "*" / "step_*" / "model")) == [set_aside]  # asked for by name
    with pytest.raises(ConfigError, match="matches no folder but checkpoints being written"):
        model_folders(str(ckpts / "*" / "*" / "step_*" / "model"))
    with pytest.raises(ConfigError, match="matches no folder but checkpoints being written"):
        model_folders(str(ckpts / "step_4*" / "model"))


def test_a_model_folder_named_with_brackets_is_taken_as_named(tmp_path):
    from rllava.pipelines.evaluate import model_folders

    (tmp_path / "model[1]").mkdir()
    (tmp_path / "model1").mkdir()  # what the pattern model[1] matches
    assert model_folders(str(tmp_path / "model[1]")) == [str(tmp_path / "model[1]")]


def test_rllava_eval_of_a_checkpoint_uses_the_settings_it_was_trained_with(tmp_path, monkeypatch, capsys):
    """The settings came from the config.yaml two folders above the checkpoint: the latest invocation's (a later
    fresh start's, say), and none at all for a checkpoint set aside in checkpoints/abandoned/ (task.yaml, defaults).
    Each checkpoint keeps the config it was trained with in its own config.yaml."""
    import rllava.pipelines.evaluate as ev
    from rllava.cli import main
    from rllava.config import load_config, to_yaml

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    trained = {"step_1": "{{ prompt }} Old template.", "abandoned/20250101-000000-after_step_0/step_2": "{{ prompt }} Set aside."}
    for folder, template in trained.items():
        (ckpts / folder / "model").mkdir(parents=True)
        cfg = load_config(None, [f"data.template={template}", "rollout.max_new_tokens=7", "reward.functions={count: 1.0}"])
        (ckpts / folder / "config.yaml").write_text(to_yaml(cfg))
    (run / "config.yaml").write_text(to_yaml(load_config(None, ["data.template={{ prompt }} The latest run's."])))
    (tmp_path / "data").mkdir()
    calls = []

    def fake_evaluate_model(model, data, rewards, overrides, config=None, base=(), **kw):
        calls.append(load_config(config, [*(base or []), f"model.path={model}", *overrides]))
        return {"model": model}

    monkeypatch.setattr(ev, "evaluate_model", fake_evaluate_model)
    for folder, template in trained.items():
        assert main(["eval", "--model", str(ckpts / folder / "model"), "--data", str(tmp_path / "data")]) == 0
        cfg = calls.pop()
        assert (cfg.data.template, cfg.rollout.max_new_tokens, cfg.reward.functions) == (template, 7, {"count": 1.0})
        assert f"settings from {ckpts / folder / 'config.yaml'}" in capsys.readouterr().out
    assert main(["eval", "--model", str(ckpts / "*" / "model"), "--data", str(tmp_path / "data"),
                 "--max-new-tokens", "3"]) == 0  # a flag still wins
    assert [(c.data.template, c.rollout.max_new_tokens) for c in calls] == [(trained["step_1"], 3)]
    (ckpts / "step_3" / "model").mkdir(parents=True)  # written before checkpoints kept their config: the run's
    assert main(["eval", "--model", str(ckpts / "step_3" / "model"), "--data", str(tmp_path / "data")]) == 0
    assert calls[-1].data.template == "{{ prompt }} The latest run's."
    assert f"settings from {run / 'config.yaml'}" in capsys.readouterr().out


def test_task_overrides_keep_characters_beyond_the_basic_plane(tmp_path):
    """json.dumps wrote an emoji as a surrogate pair, which YAML read as two lone surrogates (UnicodeEncodeError
    later); U+2028 and U+0085, line breaks to YAML, must not fold into spaces either."""
    import yaml

    from rllava.config import load_config

    template = "{{ prompt }} Count the \U0001F34E.\u2028Answer\x85with a number; stop at \u2029 \"#1\" '0715'\n"
    stop = ["\U0001F6D1", "</a>", "\n"]
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({"data": {"template": template}, "rollout": {"stop": stop},
                                                        "reward": {"functions": {"count": 1.0}}}, allow_unicode=True),
                                        encoding="utf-8")
    cfg = load_config(None, task_overrides(str(tmp_path)))
    assert cfg.data.template == template and cfg.rollout.stop == stop and cfg.reward.functions == {"count": 1.0}
