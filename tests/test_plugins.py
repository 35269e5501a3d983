"""A user file registers an advantage estimator through `plugins:`, with no framework edit."""
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
