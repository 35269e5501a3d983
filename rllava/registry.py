"""Named registries: the one way user code plugs algorithms, rewards, tasks and tools in."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message names the closest known one."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    name: str
    fn: Callable[..., Any]
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> callable map with a decorator, one-line descriptions and helpful errors."""

    def __init__(self, kind: str, description: str = ""):
        self.kind = kind
        self.description = description
        self._entries: dict[str, Entry] = {}
        ALL_REGISTRIES[kind] = self

    def register(self, name: str, description: str | None = None, **meta: Any) -> Callable:
        """Decorator: `@REG.register("name", requires=("values",))`. Re-registering replaces."""

        def deco(fn: Callable) -> Callable:
            doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, fn, doc, dict(meta))
            return fn

        return deco

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def get(self, name: str) -> Callable:
        return self.entry(name).fn

    def __getitem__(self, name: str) -> Callable:
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})"


ALL_REGISTRIES: dict[str, Registry] = {}
