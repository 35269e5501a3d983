"""Environments and tools for multi-turn episodes.

`ENVIRONMENTS` holds environment classes ("tools" = `ToolEnv`), `TOOLS` holds tool functions
(zoom, python, search), `CALL_FORMATS` the tool-call syntaxes (xml, json). User plugins add to
them with `@TOOLS.register("name", parameters={...JSON schema...})`.
"""
from collections.abc import Callable
from typing import Any, Optional

from rllava.envs import python_tool, search_tool, tool_env, zoom_tool  # noqa: F401  (fill the registries)
from rllava.envs.base import (
    ENVIRONMENTS,
    TOOLS,
    Environment,
    EpisodeOutcome,
    Observation,
    StepResult,
    ToolContext,
    ToolError,
    ToolSettings,
    check_arguments,
    tool_schemas,
)
from rllava.envs.episode_reward import episode_reward
from rllava.envs.parsing import CALL_FORMATS, Action, instructions, parse_action
from rllava.envs.sandbox import SandboxLimits, SandboxResult, run_python, sandbox_support
from rllava.envs.tool_env import ToolEnv


def make_environment(cfg: Any, answer_reward: Optional[Callable[[str, dict], float]] = None) -> Environment:
    """The environment named by `cfg.name` (an `EnvConfig`), built with `from_config`."""
    return ENVIRONMENTS.get(cfg.name).from_config(cfg, answer_reward=answer_reward)


__all__ = [
    "ENVIRONMENTS", "TOOLS", "CALL_FORMATS", "Environment", "EpisodeOutcome", "Observation", "StepResult",
    "ToolContext", "ToolError", "ToolSettings", "ToolEnv", "Action", "SandboxLimits", "SandboxResult",
    "check_arguments", "episode_reward", "instructions", "make_environment", "parse_action", "run_python",
    "sandbox_support", "tool_schemas",
]
