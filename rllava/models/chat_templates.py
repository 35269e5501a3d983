"""Chat templates for the tiny model families, generated from one table of turn markers.

Each template renders `messages` whose `content` is a string or a list of items
(`{"type": "text", "text": ...}`, `{"type": "image"}`, `{"type": "video"}`), plus
`add_generation_prompt`. A `tool` message is shown as a user turn wrapped in
`<tool_response>` (as Qwen2.5 does), so agentic environments need no template of their own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnStyle:
    """How one family marks turns and media. `roles` maps role -> (prefix, suffix)."""

    roles: dict[str, tuple[str, str]]
    image: str
    video: str = ""
    bos: str = ""
    generation_prompt: str | None = None  # default: the assistant prefix


def _chatml(image: str, video: str = "") -> TurnStyle:
    turn = {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")}
    return TurnStyle(roles=turn, image=image, video=video)


STYLES: dict[str, TurnStyle] = {
    "qwen_vl": _chatml("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"),
    "chatml_text": _chatml(""),
    "chatml_image": _chatml("<image>\n"),
    "internvl": _chatml("<IMG_CONTEXT>\n", "<video>\n"),  # the processor expands each to <img> + tokens + </img>
    "llava": TurnStyle(
        roles={"system": ("", " "), "user": ("USER: ", " "), "assistant": ("ASSISTANT: ", "</s> ")},
        image="<image>\n", generation_prompt="ASSISTANT:"),
    "idefics3": TurnStyle(
        roles={"system": ("System: ", "<end_of_utterance>\n"), "user": ("User:", "<end_of_utterance>\n"),
               "assistant": ("Assistant: ", "<end_of_utterance>\n")},
        image="<image>", bos="<|begin_of_text|>", generation_prompt="Assistant:"),
    "smolvlm": TurnStyle(
        roles={"system": ("System: ", "<end_of_utterance>\n"), "user": ("User:", "<end_of_utterance>\n"),
               "assistant": ("Assistant: ", "<end_of_utterance>\n")},
        image="<image>", bos="<|im_start|>", generation_prompt="Assistant:"),
    "gemma3": TurnStyle(
        # Gemma has no system turn; a system message becomes a user turn of its own.
        roles={"system": ("<start_of_turn>user\n", "<end_of_turn>\n"), "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
               "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
        image="<start_of_image>", bos="<bos>"),
}


def render_template(style: TurnStyle) -> str:
    """The jinja chat template for a turn style."""
    roles = dict(style.roles)
    tool_prefix, tool_suffix = roles["user"]
    roles.setdefault("tool", (tool_prefix + "<tool_response>\n", "\n</tool_response>" + tool_suffix))
    gen = style.generation_prompt if style.generation_prompt is not None else roles["assistant"][0]
    lit = json.dumps  # JSON string and object literals are valid jinja literals
    return (
        f"{{%- set roles = {lit(roles)} -%}}"
        f"{{{{- {lit(style.bos)} -}}}}"
        "{%- for message in messages -%}"
        "{%- set turn = roles[message['role']] if message['role'] in roles else roles['user'] -%}"
        "{{- turn[0] -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for item in message['content'] -%}"
        f"{{%- if item['type'] in ['image', 'image_url'] -%}}{{{{- {lit(style.image)} -}}}}"
        f"{{%- elif item['type'] == 'video' -%}}{{{{- {lit(style.video)} -}}}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{- turn[1] -}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {lit(gen)} -}}}}{{%- endif -%}}"
    )


def chat_template(style_name: str) -> str:
    return render_template(STYLES[style_name])
