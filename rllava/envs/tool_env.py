"""`ToolEnv` ("tools"): the policy calls registered tools turn by turn, then gives an `<answer>`.

Per turn (parsed with `parse_action` in the configured call format):

| action | observation (role) | turn reward | ends the episode |
|---|---|---|---|
| tool call that runs | tool output, text and/or images (tool) | +tool_reward | no |
| tool call that fails (bad arguments, unknown tool, exception, image budget) | "Error: ..." (tool) | -tool_error_penalty | no |
| malformed call | the parse error and the expected format (user) | -invalid_penalty | no |
| `<answer>...</answer>` | none | 0; the answer reward is kept apart | yes |
| plain text | none, or an error if `no_action="invalid"` | 0 / -invalid_penalty | yes / no |

The episode also ends after `max_turns` policy turns; a tool call on the last turn is not run,
since its result could not be read. `max_images` bounds all images in the context (prompt
images included). Per-turn rewards go into `info["turn_reward"]` and `outcome().turn_rewards`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

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
    echo,
    tool_schemas,
)
from rllava.envs.parsing import CALL_FORMATS, Action, instructions, parse_action
from rllava.envs.sandbox import SandboxLimits, clip_text
from rllava.envs.zoom_tool import ZOOM_BOX_FRAMES

AnswerReward = Callable[[str, dict], float]  # fn(answer_text, sample_meta) -> reward
MAX_ERROR_CHARS = 1000  # a tool's error message (which may quote its input) is cut to this in the observation


@ENVIRONMENTS.register("tools", description="tool use (zoom, python, search, ...) until an <answer>; tools from env.tools")
class ToolEnv(Environment):
    def __init__(self, tools: Sequence[str] = ("zoom",), max_turns: int = 4, max_images: int = 8,
                 call_format: str = "xml", answer_reward: Optional[AnswerReward] = None, tool_reward: float = 0.0,
                 invalid_penalty: float = 0.1, tool_error_penalty: float = 0.0, no_action: str = "end",
                 settings: Optional[ToolSettings] = None):
        for name in tools:
            TOOLS.entry(name)  # unknown names fail here, naming the closest one
        CALL_FORMATS.entry(call_format)
        if max_turns < 1:
            raise ValueError(f"env.max_turns must be >= 1, got {max_turns}")
        if no_action not in ("end", "invalid"):
            raise ValueError(f"no_action must be 'end' or 'invalid', got {no_action!r}")
        self.tools = list(tools)
        self.max_turns, self.max_images, self.call_format = max_turns, max_images, call_format
        self.answer_reward = answer_reward
        self.tool_reward, self.invalid_penalty, self.tool_error_penalty = tool_reward, invalid_penalty, tool_error_penalty
        self.no_action = no_action
        self.settings = settings or ToolSettings()
        if self.settings.zoom_box_frame not in ZOOM_BOX_FRAMES:  # else every zoom call would fail mid-training
            raise ValueError(f"env.zoom_box_frame={self.settings.zoom_box_frame!r} is not one of {list(ZOOM_BOX_FRAMES)}")
        self.ctx: Optional[ToolContext] = None
        self._outcome = EpisodeOutcome()
        self._done = False
        self._invalid_turns = 0

    @classmethod
    def from_config(cls, cfg: Any, answer_reward: Optional[AnswerReward] = None) -> ToolEnv:
        """From an `EnvConfig` (tools, max_turns, max_images, call_format, tool_timeout_s, tool_memory_mb, corpus_path,
        zoom_box_frame)."""
        settings = ToolSettings(python=SandboxLimits(timeout_s=cfg.tool_timeout_s, memory_mb=cfg.tool_memory_mb),
                                corpus_path=cfg.corpus_path, zoom_box_frame=cfg.zoom_box_frame)
        return cls(tools=list(cfg.tools), max_turns=cfg.max_turns, max_images=cfg.max_images,
                   call_format=cfg.call_format, answer_reward=answer_reward, tool_reward=cfg.tool_reward,
                   invalid_penalty=cfg.invalid_penalty, settings=settings)

    # ---- episode

    def reset(self, sample_meta: dict[str, Any], images: list[Any]) -> Optional[Observation]:
        self.close()
        self.ctx = ToolContext(images=list(images), sample_meta=dict(sample_meta), settings=self.settings)
        self._outcome = EpisodeOutcome()
        self._done = False
        self._invalid_turns = 0
        return None  # the prompt itself is the first observation

    def step(self, action_text: str) -> StepResult:
        if self.ctx is None:
            raise RuntimeError("ToolEnv.step() before reset()")
        if self._done:
            raise RuntimeError("ToolEnv.step() after the episode ended; call reset()")
        action = parse_action(action_text, self.call_format)
        turn = len(self._outcome.turn_rewards) + 1
        last = turn >= self.max_turns
        obs, reward, info = self._HANDLERS[action.kind](self, action, last)
        info = {"turn": turn, "action": action.kind, **info}
        turn_reward = 0.0 if action.kind == "answer" else reward
        self._outcome.turn_rewards.append(turn_reward)
        info["turn_reward"] = turn_reward
        if not self._done and last:
            self._finish("max_turns")
        if self._done:
            info["stop"] = self._outcome.stop_reason
            obs = None
        return StepResult(observation=obs, reward=reward, done=self._done, info=info)

    def outcome(self) -> EpisodeOutcome:
        self._outcome.format_ok = self._outcome.answer is not None and self._invalid_turns == 0
        return self._outcome

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.cleanup()

    # ---- one handler per action kind: (observation, reward, info)

    def _on_answer(self, action: Action, last: bool) -> tuple[Optional[Observation], float, dict]:
        self._outcome.answer = action.answer
        r = float(self.answer_reward(action.answer, self.ctx.sample_meta)) if self.answer_reward else 0.0
        self._outcome.answer_reward = r
        self._finish("answer")
        return None, r, {"answer": action.answer, "answer_reward": r}

    def _on_tool(self, action: Action, last: bool) -> tuple[Optional[Observation], float, dict]:
        info: dict[str, Any] = {"tool": action.name}
        if last:
            return None, 0.0, {**info, "tool_skipped": True}
        try:
            if action.name not in self.tools:
                raise ToolError(f"unknown tool {echo(action.name)}; available tools: {', '.join(self.tools)}")
            obs = TOOLS.get(action.name)(action.arguments, self.ctx)
            if len(self.ctx.images) + len(obs.images) > self.max_images:
                raise ToolError(f"image limit reached: at most {self.max_images} images per episode")
        except ToolError as e:
            return self._tool_error(str(e), info)
        except Exception as e:  # a tool bug must not kill the rollout: the model sees it, we log it
            return self._tool_error(f"{action.name} failed: {type(e).__name__}: {e}", info)
        self.ctx.images.extend(obs.images)
        self._outcome.num_tool_calls += 1
        return Observation(text=obs.text, images=list(obs.images), role="tool"), self.tool_reward, info

    def _tool_error(self, message: str, info: dict) -> tuple[Observation, float, dict]:
        message = clip_text(message, MAX_ERROR_CHARS)
        return Observation(text=f"Error: {message}", role="tool"), -self.tool_error_penalty, {**info, "error": message}

    def _on_invalid(self, action: Action, last: bool) -> tuple[Optional[Observation], float, dict]:
        self._invalid_turns += 1
        text = f"Your last message was not understood: {action.error}"
        return Observation(text=text, role="user"), -self.invalid_penalty, {"error": action.error}

    def _on_none(self, action: Action, last: bool) -> tuple[Optional[Observation], float, dict]:
        if self.no_action == "end":
            self._finish("no_action")
            return None, 0.0, {}
        return self._on_invalid(Action("invalid", error="no tool call and no <answer>...</answer> found"), last)

    _HANDLERS = {"answer": _on_answer, "tool": _on_tool, "invalid": _on_invalid, "none": _on_none}

    def _finish(self, reason: str) -> None:
        self._done = True
        self._outcome.stop_reason = reason

    # ---- prompts

    def tool_schemas(self) -> list[dict[str, Any]]:
        return tool_schemas(self.tools)

    def instructions(self) -> str:
        return instructions(self.tool_schemas(), self.call_format)
