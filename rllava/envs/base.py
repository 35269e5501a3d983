"""The environment and tool contract: observations, step results, tool context, and the two registries.

An `Environment` serves one episode: `reset(sample_meta, images)` once, then `step(action_text)`
once per policy turn until `done`. A tool is `fn(args: dict, ctx: ToolContext) -> Observation`,
registered with a JSON-schema `parameters` dict in its meta (rendered into prompts by
`tool_schemas`). Tools signal bad input by raising `ToolError`; any other exception is also
caught by the environment and shown to the model as an error observation.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from rllava.envs.sandbox import SandboxLimits
from rllava.registry import Registry

ENVIRONMENTS = Registry("environment", "multi-turn environments: class with reset(sample_meta, images) and step(action_text)")
TOOLS = Registry("tool", "tools callable by the policy: fn(args, ctx) -> Observation; meta['parameters'] is a JSON schema")


class ToolError(Exception):
    """Bad tool input or a failed tool run; its message is shown to the model."""


ECHO_CHARS = 80  # the most of the model's own text that an error message repeats back


def echo(value: Any, max_chars: int = ECHO_CHARS) -> str:
    """repr of model-written input for an error message, cut short: a 100 KB argument must not come back
    as a 100 KB observation (it would blow the episode's token budget)."""
    text = repr(value)
    return text if len(text) <= max_chars else f"{text[:max_chars]}... ({len(text)} characters)"


@dataclass
class Observation:
    """What the environment shows the policy next: text and/or images, as a `tool` or `user` turn."""

    text: str = ""
    images: list[Any] = field(default_factory=list)  # PIL images
    role: Literal["tool", "user"] = "tool"


@dataclass
class StepResult:
    observation: Optional[Observation]  # None once done
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolSettings:
    """Per-tool limits and resources; `extra` holds settings of user-registered tools."""

    zoom_size: int = 224  # longer side of a zoomed crop, in pixels
    zoom_min_side: int = 28  # shorter side is never below this (VLM processors need a few patches)
    zoom_box_frame: str = "pixels"  # how the model writes zoom's bbox: pixels (original image) | input | norm1000 | norm1
    python: SandboxLimits = field(default_factory=SandboxLimits)
    corpus_path: Optional[str] = None  # search corpus: .jsonl {"id","title","text"} or one passage per line
    search_max_k: int = 10
    search_passage_chars: int = 600  # each returned passage is cut to this length
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolContext:
    """What a tool may use: the episode's images (prompt first, then tool outputs), meta, settings, a private folder."""

    images: list[Any] = field(default_factory=list)
    sample_meta: dict[str, Any] = field(default_factory=dict)
    settings: ToolSettings = field(default_factory=ToolSettings)
    _work_dir: Optional[Path] = None

    @property
    def work_dir(self) -> Path:
        """The episode's private temp folder (created on first use, kept across turns, removed by `cleanup`)."""
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="rllava-episode-"))
        return self._work_dir

    def cleanup(self) -> None:
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None


@dataclass
class EpisodeOutcome:
    """How an episode ended, for the episode reward: see `envs.episode_reward.episode_reward`."""

    answer: Optional[str] = None  # the final <answer> text; None if the episode ended without one
    answer_reward: float = 0.0
    format_ok: bool = False  # ended with an answer and every turn was well-formed
    turn_rewards: list[float] = field(default_factory=list)  # one per policy turn (0 on the answer turn)
    num_tool_calls: int = 0  # tool calls that ran and succeeded
    stop_reason: str = ""  # answer | max_turns | no_action


class Environment:
    """One episode's environment. Subclasses register with `@ENVIRONMENTS.register(name)`."""

    @classmethod
    def from_config(cls, cfg: Any, answer_reward: Any = None) -> Environment:
        """Build from an `EnvConfig`-like object; the default ignores it."""
        return cls()

    def reset(self, sample_meta: dict[str, Any], images: list[Any]) -> Optional[Observation]:
        """Start an episode for one sample; returns an initial observation or None (the prompt suffices)."""
        raise NotImplementedError

    def step(self, action_text: str) -> StepResult:
        """Apply one policy turn (its decoded text)."""
        raise NotImplementedError

    def outcome(self) -> EpisodeOutcome:
        """How the episode went so far (final once a step returned done); optional for simple environments."""
        return EpisodeOutcome()

    def tool_schemas(self) -> list[dict[str, Any]]:
        """OpenAI-style function schemas of the tools on offer (for `apply_chat_template(tools=...)`)."""
        return []

    def instructions(self) -> str:
        """Text for the system prompt that explains how to call tools and answer ('' if none)."""
        return ""

    def close(self) -> None:
        """Release per-episode resources (temp folders)."""

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tool_schemas(names: list[str]) -> list[dict[str, Any]]:
    """`{"type": "function", "function": {name, description, parameters}}` for each tool name."""
    out = []
    for name in names:
        e = TOOLS.entry(name)
        params = e.meta.get("parameters", {"type": "object", "properties": {}})
        out.append({"type": "function", "function": {"name": name, "description": e.description, "parameters": params}})
    return out


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,),
}


def check_arguments(args: Any, schema: dict[str, Any], tool: str) -> dict[str, Any]:
    """Validate tool arguments against a flat JSON schema; fill defaults; raise ToolError naming the field."""
    if not isinstance(args, dict):
        raise ToolError(f"{tool}: arguments must be a JSON object, got {type(args).__name__}")
    props: dict[str, Any] = schema.get("properties", {})
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(f"{tool}: unknown argument(s) {echo(unknown)}; expected {sorted(props)}")
    out = {}
    for key, spec in props.items():
        if key not in args:
            if key in schema.get("required", []):
                raise ToolError(f"{tool}: missing required argument {key!r}")
            if "default" in spec:
                out[key] = spec["default"]
            continue
        value, want = args[key], spec.get("type")
        types = _JSON_TYPES.get(want, (object,))
        # bool is an int subclass in Python but not a JSON number
        if not isinstance(value, types) or (isinstance(value, bool) and want in ("integer", "number")):
            raise ToolError(f"{tool}: argument {key!r} must be of type {want}, got {json_type(value)}")
        out[key] = value
    return out


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (for error messages)."""
    for name, types in _JSON_TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return name
    return "null" if value is None else type(value).__name__
