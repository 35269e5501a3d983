import subprocess
import sys

EXPECTED = {
    "advantage": ["gae", "grpo", "dr_grpo", "grpo_passk", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline",
                  "remax", "opo", "gpg"],
    "policy_loss": ["ppo", "gspo", "gmpo", "clip_cov", "kl_cov", "cispo", "sapo", "gpg", "sft"],
    "kl_estimator": ["k1", "k2", "k3", "abs", "k1+", "k2+", "k3+"],
    "aggregation": ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
    "group_filter": ["dapo_nonuniform", "reward_range"],
    "reward_shaping": ["overlong_penalty"],
    "reward": ["math", "format", "count", "iou", "detection", "answer_tag", "exact_match"],
    "task": ["counting", "geometry", "grounding", "detection", "zoom"],
    "model_family": ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "smolvlm", "gemma3", "qwen2", "qwen3",
                     "internvl", "llava_onevision", "tinyllava"],
    "train_engine": ["local", "fsdp2"],
    "rollout_engine": ["hf", "vllm"],
    "pipeline": ["rlvr", "sft", "agentic", "agentic_sft"],
    "environment": ["tools"],
    "tool": ["zoom", "python", "search"],
    "call_format": ["json", "xml"],
}


def parse_list(out: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    kind = None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            kind = line.split(":")[0]
            found[kind] = set()
        elif line.strip() and kind:
            found[kind].add(line.split()[0])
    return found


def test_list_shows_every_registered_name():
    out = subprocess.run([sys.executable, "-m", "rllava", "list"], capture_output=True, text=True, check=True).stdout
    found = parse_list(out)
    for kind, names in EXPECTED.items():
        assert kind in found, f"registry {kind} missing from `rllava list`"
        missing = set(names) - found[kind]
        assert not missing, f"{kind}: {missing} missing"


def test_list_with_config_imports_plugins(tmp_path):
    plugin = tmp_path / "my_loss.py"
    plugin.write_text(
        "from rllava.algorithms import POLICY_LOSSES\n\n"
        "@POLICY_LOSSES.register('my_pg', description='my own policy gradient')\n"
        "def my_pg(logp, old_logp, adv, mask, cfg, **extra):\n"
        "    return -(adv * logp * mask).sum() / mask.sum(), {}\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("plugins: [my_loss.py]\n")  # relative to the config file
    out = subprocess.run([sys.executable, "-m", "rllava", "list", str(cfg)], capture_output=True, text=True,
                         check=True, cwd=tmp_path.parent).stdout
    assert "my_pg" in parse_list(out)["policy_loss"]
    assert "my own policy gradient" in out


def test_list_imports_module_plugins(tmp_path):
    """A plugin may be a module (docs/config.md: "files or modules"); one that is neither is one error line."""
    import os

    pkg = tmp_path / "my_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "losses.py").write_text(
        "from rllava.algorithms import POLICY_LOSSES\n\n"
        "@POLICY_LOSSES.register('my_module_pg', description='from a module plugin')\n"
        "def my_module_pg(logp, old_logp, adv, mask, cfg, **extra):\n"
        "    return -(adv * logp * mask).sum() / mask.sum(), {}\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("plugins: my_plugins.losses\n")  # a single one may be a string
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for args in ([str(cfg)], ["plugins=[my_plugins.losses]"]):
        out = subprocess.run([sys.executable, "-m", "rllava", "list", *args], capture_output=True, text=True,
                             check=True, env=env, cwd=tmp_path.parent).stdout
        assert "my_module_pg" in parse_list(out)["policy_loss"]
    bad = subprocess.run([sys.executable, "-m", "rllava", "list", "plugins=[my_plugins.nothing]"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and bad.stderr == ("rllava: error: plugin 'my_plugins.nothing' is neither a file nor an "
                                                  "importable module (not installed nor on PYTHONPATH)\n")
