import subprocess
import sys

import pytest

from rllava.cli import main
from rllava.config import Config, ConfigError, import_plugins, load_config, parse_overrides, to_yaml


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "rollout:\n  n: 4\n  temperature: 0.7\nalgorithm:\n  adv_estimator: rloo\n")
    cfg = load_config(path, ["rollout.n=8", "actor.lr=3e-5", "reward.functions={count: 1.0, format: 0.1}"])
    assert cfg.rollout.n == 8 and cfg.rollout.temperature == 0.7
    assert cfg.algorithm.adv_estimator == "rloo"
    assert cfg.actor.lr == pytest.approx(3e-5)
    assert cfg.reward.functions == {"count": 1.0, "format": 0.1}  # a mapping override replaces, not merges


def test_unknown_key_names_closest(tmp_path):
    path = write(tmp_path, "rollout:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.temprature'; did you mean 'rollout.temperature'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'algorithm'"):
        load_config(None, ["algorithms.kl_coef=0.1"])


def test_wrong_type_is_clear():
    with pytest.raises(ConfigError, match=r"rollout.n: expected int, got str 'many'"):
        load_config(None, ["rollout.n=many"])
    with pytest.raises(ConfigError, match=r"trainer.progress_bar: expected bool"):
        load_config(None, ["trainer.progress_bar=3"])
    # ints are accepted for floats, None for Optional
    cfg = load_config(None, ["actor.lr=1", "algorithm.clip_ratio_c=null"])
    assert isinstance(cfg.actor.lr, float) and cfg.algorithm.clip_ratio_c is None


def test_override_format_errors():
    with pytest.raises(ConfigError, match="must look like"):
        parse_overrides(["rollout.n"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["rollout.n=2", "rollout.n.x=3"])


def test_defaults_round_trip(tmp_path):
    cfg = Config()
    path = write(tmp_path, to_yaml(cfg))
    assert load_config(path) == cfg


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/exp.yaml")


def test_cli_config_prints_resolved(tmp_path):
    path = write(tmp_path, "rollout:\n  n: 3\n")
    out = subprocess.run([sys.executable, "-m", "rllava", "config", path, "rollout.top_p=0.9"],
                         capture_output=True, text=True, check=True).stdout
    assert "n: 3" in out and "top_p: 0.9" in out
    bad = subprocess.run([sys.executable, "-m", "rllava", "config", path, "rollout.nn=3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'rollout.n'" in bad.stderr and "Traceback" not in bad.stderr


def test_base_file_is_overlaid(tmp_path):
    (tmp_path / "base.yaml").write_text("rollout:\n  n: 4\n  top_p: 0.9\nplugins: [a.py]\n")
    (tmp_path / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")
    child = write(tmp_path, "base: base.yaml\nrollout:\n  n: 8\nplugins: [b.py]\n")
    cfg = load_config(child)
    assert cfg.rollout.n == 8 and cfg.rollout.top_p == 0.9
    assert [p.split("/")[-1] for p in cfg.plugins] == ["a.py", "b.py"]


@pytest.mark.parametrize("override, message", [
    ("rollout.n=0", r"rollout.n=0: must be >= 1"),
    ("data.batch_size=0", r"data.batch_size=0: must be >= 1"),
    ("rollout.temperature=-1", r"rollout.temperature=-1.0: must be >= 0.0"),
    ("actor.lr=-1e-6", r"actor.lr=-1e-06: must be >= 0.0"),
    ("rollout.top_p=0", r"rollout.top_p=0.0: must be > 0.0"),
    ("rollout.top_p=1.5", r"rollout.top_p=1.5: must be in \(0, 1\]"),
    ("actor.micro_token_budget=0", r"actor.micro_token_budget=0: must be >= 1"),
    ("actor.logprob_chunk_size=0", r"actor.logprob_chunk_size=0: must be >= 1"),
    ("actor.logprob_chunk_size=-8", r"actor.logprob_chunk_size=-8: must be >= 1"),
    ("trainer.keep_last=0", r"trainer.keep_last=0: must be >= 1"),
    ("data.max_frames=0", r"data.max_frames=0: must be >= 1"), ("data.video_fps=0", r"data.video_fps=0.0: must be > 0.0"),
    ("actor.lr=nan", r"actor.lr: expected a finite number, got nan"),  # nan < 0 is False: no range check sees it
    ("rollout.temperature=.inf", r"rollout.temperature: expected a finite number, got inf"),
])
def test_out_of_range_numbers_name_the_key(override, message):
    with pytest.raises(ConfigError, match=r"<overrides>: " + message):
        load_config(None, [override])
    load_config(None, ["rollout.temperature=0", "actor.lr=0", "actor.mini_batch_size=0"])  # the edges that are allowed


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.clip_ratio_c=1.0"], r"algorithm.clip_ratio_c=1.0: must be > 1"),
    (["algorithm.clip_ratio_low=-0.1"], r"algorithm.clip_ratio_low=-0.1: must be >= 0.0"),
    (["reward.functions={}"], "reward.functions is empty"),
    (["env.max_turns=0"], "env.max_turns=0: must be >= 1"),
    (["env.reward_weights={answr: 1.0}"], r"env.reward_weights: unknown key\(s\) \['answr'\]"),
    (["algorithm.kl_in=rewards"], "algorithm.kl_in='rewards': must be loss or reward"),
    (["algorithm.kl_ctrl=adaptive"], "algorithm.kl_ctrl=adaptive moves the KL penalty in the reward: set algorithm.kl_in=reward"),
    (["actor.lr_scheduler=cosin"], "actor.lr_scheduler='cosin' is not one of constant, cosine, linear; did you mean 'cosine'"),
    (["actor.betas=[0.9]"], r"actor.betas=\[0.9\]: give two numbers in \[0, 1\)"),  # AdamW: IndexError
    (["actor.betas=[0.9, 1.5]"], r"actor.betas=\[0.9, 1.5\]: give two numbers in \[0, 1\)"),
    # vllm.LLM: "got multiple values for keyword argument 'enforce_eager'"
    (["rollout.vllm_kwargs={enforce_eager: true}"], r"rollout.vllm_kwargs.enforce_eager: set rollout.enforce_eager"),
])
def test_settings_that_would_fail_mid_run_fail_at_load(overrides, message):
    """Each of these used to surface as a ValueError deep in a training step, after the model had loaded."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("content, message", [
    ("data: [\n", r"line 2, column 1: invalid YAML: expected the node content"),
    ("data:\n  batch_size: 4\n data: 3\n", r"line 3, column 2: invalid YAML: expected <block end>"),
    ("# r\xe9glages\ndata: {batch_size: 4}\n".encode("latin-1"), r"line 1: not UTF-8 text \(byte 0xe9\)"),
    ("plugins: 5\n", r"plugins must be a list of .py files or module names, got 5"),
    ("plugins: [a.py, 3]\n", r"plugins must be a list of .py files or module names, got \['a.py', 3\]"),
    ("base: [a.yaml]\n", r"base must be the path of one YAML file, got \['a.yaml'\]"),
])
def test_a_bad_config_file_is_one_error_line_naming_it(tmp_path, capsys, content, message):
    """These were tracebacks from inside the YAML parser, read_text or Path (rc 1)."""
    path = tmp_path / "exp.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_config(str(path))
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rllava: error: {path}: ") and err.count("\n") == 1


def test_a_folder_given_as_the_config_file_is_one_error_line(tmp_path, capsys):
    assert main(["config", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"rllava: error: {tmp_path}: is a folder, not a YAML config file\n"


def test_a_single_plugin_may_be_given_as_a_string(tmp_path):
    """`plugins: my_reward.py` used to be read a character at a time ("plugin file '.../m' not found")."""
    (tmp_path / "my_reward.py").write_text("")
    cfg = load_config(write(tmp_path, "plugins: my_reward.py\n"))
    assert cfg.plugins == [str((tmp_path / "my_reward.py").resolve())]
    import_plugins(cfg.plugins)


def test_plugins_may_be_modules(tmp_path, monkeypatch):
    """docs/config.md: plugins are "files or modules"; a module name used to be taken as a missing file."""
    pkg = tmp_path / "rllava_test_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "file_plugin.py").write_text("")
    cfg = load_config(write(tmp_path / "conf", "plugins: [rllava_test_plugin_pkg.rewards, file_plugin.py]\n"))
    # A module name stays a name; a file is still resolved against the config file's folder.
    assert cfg.plugins == ["rllava_test_plugin_pkg.rewards", str((tmp_path / "conf" / "file_plugin.py").resolve())]
    import_plugins(cfg.plugins)
    assert sys.modules["rllava_test_plugin_pkg.rewards"].LOADED
    with pytest.raises(ConfigError, match="plugin 'no_such_plugin_module' is neither a file nor an importable module"):
        import_plugins(load_config(None, ["plugins=[no_such_plugin_module]"]).plugins)
    with pytest.raises(ConfigError, match=r"plugin file '.*/conf/missing.py' not found"):  # files: as before
        import_plugins(load_config(write(tmp_path / "conf", "plugins: [missing.py]\n")).plugins)


@pytest.mark.parametrize("override, value", [
    # YAML 1.1 turned these into other text: 461 (octal), 1.1, 90 (sexagesimal), a cut at ' #' (a comment)
    ("trainer.experiment_name=0715", "0715"),
    ("trainer.experiment_name=1.10", "1.10"),
    ("trainer.experiment_name=1:30", "1:30"),
    ("trainer.experiment_name=yes", "yes"),
    ("data.template=Look at the image. {{ prompt }} #1 answer with a number",
     "Look at the image. {{ prompt }} #1 answer with a number"),
    ("data.system_prompt=Be brief #nofluff", "Be brief #nofluff"),
    ("model.path=2024-01-01", "2024-01-01"),
    # as before: YAML quotes are removed, null clears an optional text, a template that is not YAML stays as typed
    ("data.template='{{ prompt }} Answer.'", "{{ prompt }} Answer."),
    ("data.template={{ prompt }} Answer with a number.", "{{ prompt }} Answer with a number."),
    ('data.system_prompt="Be brief.\\nThink."', "Be brief.\nThink."),
    ("data.template=null", None),
    ("data.val_files=", ""),
])
def test_a_text_setting_keeps_the_text_typed(override, value):
    section, key = override.split("=", 1)[0].split(".")
    assert getattr(getattr(load_config(None, [override]), section), key) == value


def test_non_text_settings_are_still_yaml():
    cfg = load_config(None, ["rollout.n=010", "actor.lr=3e-5", "rollout.stop=[</a>, '#']", "trainer.save_every_min=1.5",
                             "reward.functions={count: 1.0}", "reward.kwargs={count: {x: 0715}}"])
    assert cfg.rollout.n == 8 and cfg.actor.lr == 3e-5 and cfg.rollout.stop == ["</a>", "#"]
    assert cfg.trainer.save_every_min == 1.5 and cfg.reward.kwargs == {"count": {"x": 461}}


@pytest.mark.parametrize("pipeline, limit, buffer, message", [
    ("rlvr", ["rollout.max_new_tokens=8"], 16, r"algorithm.overlong_buffer_len=16: must be in \(0, rollout.max_new_tokens=8\]"),
    # multi-turn: the penalty ramps up before the episode's token budget, not a turn's
    ("agentic", ["rollout.max_new_tokens=128", "env.max_total_tokens=64"], 100,
     r"algorithm.overlong_buffer_len=100: must be in \(0, env.max_total_tokens=64\]"),
    ("agentic", ["rollout.max_new_tokens=48", "env.max_total_tokens=1024"], 256, None),
])
def test_overlong_buffer_is_bounded_by_the_pipelines_length_limit(pipeline, limit, buffer, message):
    from rllava.pipelines.registry import PIPELINES

    cfg = load_config(None, [f"trainer.pipeline={pipeline}", "env.name=tools", "env.tools=[python]",
                             "algorithm.reward_shaping=[overlong_penalty]", f"algorithm.overlong_buffer_len={buffer}",
                             *limit])
    if message is None:
        PIPELINES.get(pipeline)(cfg)
    else:
        with pytest.raises(ConfigError, match=message):
            PIPELINES.get(pipeline)(cfg)
