"""User files register an advantage estimator and a reward through `plugins:`, with no framework edit."""
from pathlib import Path
from types import SimpleNamespace

import torch

from rllava.algorithms import ADVANTAGES
from rllava.config import import_plugins, load_config

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "plugins" / "my_advantage.py"


def test_plugin_registers_median_baseline(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"plugins: [{PLUGIN}]\nalgorithm:\n  adv_estimator: median_baseline\n")
    cfg = load_config(str(exp))
    import_plugins(cfg.plugins)
    assert "median_baseline" in ADVANTAGES
    batch = SimpleNamespace(
        token_rewards=torch.tensor([[0.0, 3.0], [1.0, 0.0], [0.0, 2.0], [5.0, 0.0], [1.0, 0.0]]),
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
        group_ids=torch.tensor([0, 0, 0, 1, 1]))
    adv, _ = ADVANTAGES[cfg.algorithm.adv_estimator](batch, cfg.algorithm)
    # group 0 = [3, 1, 2]: median 2; group 1 = [5, 1]: lower median 1
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 0.0]]))


def test_plugin_registers_the_strict_tagged_count_reward():
    from rllava.rewards import REWARDS

    import_plugins([str(PLUGIN.parent / "tagged_count.py")])
    reward = REWARDS.get("tagged_count")
    assert reward(" <answer> 3 </answer>\n", "3") == {"overall": 1.0, "accuracy": 1.0}
    for wrong in ("<answer>4</answer>", "3", "There are 3.", "<answer>3</answer> done", "<answer>three</answer>"):
        assert reward(wrong, "3")["overall"] == 0.0, wrong
    assert REWARDS.entry("tagged_count").meta["accuracy"]
