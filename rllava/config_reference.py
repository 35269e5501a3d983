"""The config reference (docs/config.md), generated from the dataclasses in `rllava.config`.

Each field's type, default and trailing `# comment` are read from the source, so the
reference cannot drift from the code; a test checks that docs/config.md is current.
"""
from __future__ import annotations

import dataclasses
import inspect
import re

from rllava.config import Config

_FIELD = re.compile(r"^\s+(\w+):\s*([^=#]+?)\s*=\s*(.+?)\s*(?:#\s*(.*))?$")


def _default(text: str) -> str:
    """`field(default_factory=lambda: [...])` shown as the value it makes."""
    m = re.match(r"field\(default_factory=(?:lambda:\s*)?(.+)\)$", text)
    if not m:
        return text
    inner = m.group(1)
    return {"list": "[]", "dict": "{}"}.get(inner, inner)


def section_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, comment) for every field of a config dataclass, in source order."""
    names = {f.name for f in dataclasses.fields(cls)}
    rows = []
    for line in inspect.getsource(cls).splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) in names:
            rows.append((m.group(1), m.group(2).strip(), _default(m.group(3)), (m.group(4) or "").strip()))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    """Markdown: one table per config section."""
    out = ["# Config reference", "",
           "Generated from `rllava/config.py` by `rllava config --reference`; do not edit by hand.",
           "Set a field in YAML (`section: {field: value}`) or on the command line (`section.field=value`).", "",
           "A command-line value is read as YAML (`rollout.n=8`, `reward.functions={count: 1.0}`), except that a",
           "`str` field keeps the text as typed (`trainer.experiment_name=0715`, `data.system_prompt=Be brief #1`);",
           "quotes around it are removed (`data.template='{{ prompt }}'`) and `null` clears an optional one.", "",
           "`plugins` (top level): files or modules imported before the run, to register algorithms, rewards,",
           "tasks or environments: `.py` files (a relative path: from the current folder if the file is there, else from the config file's folder) or",
           "dotted module names (`my_pkg.rewards`, imported from the installed packages and PYTHONPATH);",
           "a single one may be a plain string.", ""]
    defaults = Config()
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        out += [f"## `{f.name}`", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, typ, default, comment in section_rows(type(section)):
            out.append(f"| `{name}` | `{typ}` | `{_cell(default)}` | {_cell(comment)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
