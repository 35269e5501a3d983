"""docs/coming_from.md and the README's Algorithms table stay true: every rllava setting they name is a config
key, and every name they give such a setting (estimators, losses, engines, rewards, ...) is registered."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from rllava.algorithms.advantages import ADVANTAGES
from rllava.config import Config, load_config
from rllava.pipelines.run import setting_registries
from rllava.rewards.registry import REWARDS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "coming_from.md"
SECTIONS = {f.name for f in dataclasses.fields(Config)}  # plugins, data, model, algorithm, ...
NAMED = setting_registries()  # setting -> the registry its names come from


def algorithms_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Algorithms\n"):readme.index("## Adding an algorithm")]


def mapping_rows(text: str | None = None) -> list[tuple[str, str]]:
    """(rllava cell, note cell) of every table row whose rllava cell names a setting."""
    rows = []
    for line in (DOC.read_text() if text is None else text).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and "`" in cells[1] and not cells[1].startswith("`torchrun"):
            rows.append((cells[1], cells[2]))
    return rows


def settings(cell: str) -> list[tuple[str, str | None, list[str]]]:
    """(key, value, alternative values) for each `key[=value]` in a cell; bare `name`s after one are alternatives."""
    out: list[tuple[str, str | None, list[str]]] = []
    for token in re.findall(r"`([^`]+)`", cell):
        key, _, value = token.partition("=")
        if key.split(".")[0] in SECTIONS and (key == "plugins" or "." in key):
            out.append((key, value or None, []))
        elif out and out[-1][1] is not None and re.fullmatch(r"[\w+.-]+", token):
            out[-1][2].append(token)
    return out


def test_the_doc_has_the_three_tables():
    text = DOC.read_text()
    assert all(h in text for h in ("## veRL", "## EasyR1", "## TRL")) and len(mapping_rows()) > 60


def test_the_readme_lists_the_mission_algorithms():
    names = [row.split("|")[1].strip() for row in algorithms_section().splitlines() if row.startswith("| ")][1:]
    for name in ("GRPO", "Dr. GRPO", "DAPO", "RLOO", "REINFORCE++", "ReMax", "OPO", "GPG", "PPO", "GSPO", "GMPO",
                 "Clip-Cov, KL-Cov", "CISPO", "SAPO", "LUFFY", "SRFT", "HPT", "CHORD", "UFT", "KL", "Entropy bonus"):
        assert name in names, name


@pytest.mark.parametrize("rllava_cell,note", mapping_rows() + mapping_rows(algorithms_section()))
def test_each_rllava_setting_exists(rllava_cell, note):
    found = settings(rllava_cell)
    assert found, f"no rllava setting in {rllava_cell!r}"
    # A cell's settings go together (e.g. kl_ctrl=adaptive needs kl_in=reward): they parse and pass the checks.
    load_config(None, [f"{k}={v}" for k, v, _ in found if v is not None and "{" not in v and "[" not in v])
    for key, value, alternatives in found:
        section, _, field = key.partition(".")
        if field:
            assert field in {f.name for f in dataclasses.fields(getattr(Config(), section))}, key
        names = [v for v in [value, *alternatives] if v is not None]
        if key in NAMED:
            for name in names:
                name = name.strip("[]")
                assert name in NAMED[key], f"{key}={name} is not registered"
            if key == "algorithm.adv_estimator" and value is None:  # the note lists the estimators veRL shares
                for name in re.findall(r"`([\w+-]+)`", note):
                    assert name in ADVANTAGES, name
        if key == "reward.functions" and value:
            for name in re.findall(r"(\w+):", value):
                assert name in REWARDS, name
