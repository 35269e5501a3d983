"""docs/config.md is generated from rllava/config.py and must stay current."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rllava.config import Config
from rllava.config_reference import config_reference, section_rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_field_is_in_the_reference():
    defaults = Config()
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        if dataclasses.is_dataclass(section):
            assert [r[0] for r in section_rows(type(section))] == [g.name for g in dataclasses.fields(section)]


def test_docs_config_md_is_current():
    assert DOC.read_text() == config_reference(), "regenerate: rllava config --reference > docs/config.md"
