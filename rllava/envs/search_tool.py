"""`search`: offline BM25 retrieval over a local corpus (`settings.corpus_path`).

Corpus formats: `.jsonl` with one `{"id", "title", "text"}` object per line (title and text are
both indexed), or any other text file with one passage per line (id = line number).
Okapi BM25 with idf = ln(1 + (N - df + 0.5) / (df + 0.5)), so idf is never negative.
"""
from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllava.envs.base import TOOLS, Observation, ToolContext, ToolError, check_arguments, echo

_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass
class Passage:
    id: str
    title: str
    text: str


class BM25:
    """An in-memory BM25 index over passages (inverted lists, so a query touches only matching passages)."""

    def __init__(self, passages: list[Passage], k1: float = 1.5, b: float = 0.75):
        self.passages, self.k1, self.b = passages, k1, b
        self.postings: dict[str, list[tuple[int, int]]] = {}  # term -> [(passage index, term count)]
        self.lengths = []
        for i, p in enumerate(passages):
            tf = Counter(tokenize(f"{p.title} {p.text}"))
            self.lengths.append(sum(tf.values()))
            for t, c in tf.items():
                self.postings.setdefault(t, []).append((i, c))
        n = len(passages)
        self.avg_len = sum(self.lengths) / n if n else 0.0
        self.idf = {t: math.log(1 + (n - len(ps) + 0.5) / (len(ps) + 0.5)) for t, ps in self.postings.items()}

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score of every passage that shares a term with the query."""
        out: dict[int, float] = {}
        for t in set(tokenize(query)):
            for i, c in self.postings.get(t, ()):
                norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / (self.avg_len or 1.0))
                out[i] = out.get(i, 0.0) + self.idf[t] * c * (self.k1 + 1) / (c + norm)
        return out

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """Top-k (passage index, score), best first; ties keep corpus order."""
        return sorted(self.scores(query).items(), key=lambda s: (-s[1], s[0]))[:k]


def load_corpus(path: str | Path) -> list[Passage]:
    """Read a .jsonl corpus ({"id", "title", "text"}) or a text file with one passage per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search corpus not found: {path}")
    # "\n" alone ends a line: str.splitlines() would also split at U+2028, form feeds, ... inside a passage (and
    # json.dumps(ensure_ascii=False) writes U+2028 as it is); utf-8-sig drops a byte-order mark.
    lines = [ln.removesuffix("\r") for ln in path.read_text(encoding="utf-8-sig").split("\n")]
    if path.suffix != ".jsonl":
        return [Passage(str(i), "", line.strip()) for i, line in enumerate(lines) if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{n}: each row needs a string field 'text' (and optionally 'id', 'title')")
        rid, title = row.get("id"), row.get("title")  # a null one is absent, not the text "None"
        out.append(Passage(str(n - 1 if rid is None else rid), "" if title is None else str(title), row["text"]))
    return out


_INDEX_CACHE: dict[tuple[str, float, int], BM25] = {}
_INDEX_LOCK = threading.Lock()


def corpus_index(path: str | Path) -> BM25:
    """The BM25 index of a corpus file, built once per file version and shared by all episodes."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime, st.st_size)
    with _INDEX_LOCK:
        if key not in _INDEX_CACHE:
            _INDEX_CACHE[key] = BM25(load_corpus(p))
        return _INDEX_CACHE[key]


SEARCH_PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "keywords to look for"},
        "k": {"type": "integer", "default": 3, "description": "how many passages to return"},
    },
    "required": ["query"],
}


@TOOLS.register("search", parameters=SEARCH_PARAMETERS)
def search(args: dict[str, Any], ctx: ToolContext) -> Observation:
    """Search a local text corpus (BM25) and return the best-matching passages."""
    args = check_arguments(args, SEARCH_PARAMETERS, "search")
    s = ctx.settings
    if not s.corpus_path:
        raise ToolError("search: no corpus is configured (env.corpus_path)")
    if not args["query"].strip():
        raise ToolError("search: the query is empty")
    k = min(max(1, args["k"]), s.search_max_k)
    index = corpus_index(s.corpus_path)
    hits = index.search(args["query"], k)
    if not hits:
        return Observation(text=f"No passage matches {echo(args['query'])}.")
    blocks = []
    for rank, (i, _) in enumerate(hits, 1):
        p = index.passages[i]
        body = p.text if len(p.text) <= s.search_passage_chars else p.text[: s.search_passage_chars] + "..."
        title = f" {p.title}" if p.title else ""
        blocks.append(f"[{rank}] (id {p.id}){title}\n{body}")
    return Observation(text="\n\n".join(blocks))
