"""Prompt text: the per-task jinja template, `<image>`/`<video>` markers to chat content, the chat template."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import jinja2

IMAGE_MARKER, VIDEO_MARKER = "<image>", "<video>"
_MARKERS = re.compile(f"({re.escape(IMAGE_MARKER)}|{re.escape(VIDEO_MARKER)})")
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2", ".txt")


class TemplateError(ValueError):
    """A template that cannot be read or rendered."""


def read_text_or_file(spec: str, what: str) -> str:
    """`spec` itself, or the contents of the file it names (a path ending .jinja/.j2/.txt, or any existing file)."""
    looks_like_path = "\n" not in spec and "{" not in spec and len(spec) < 1024
    if looks_like_path and spec.endswith(TEMPLATE_SUFFIXES):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise TemplateError(f"{what} file {spec!r} not found")
        return p.read_text()
    if looks_like_path and Path(spec).expanduser().is_file():
        return Path(spec).expanduser().read_text()
    return spec


def read_chat_template(spec: str) -> str:
    """`data.chat_template`: a template text or file; a .json file (a model folder's chat_template.json or
    tokenizer_config.json) gives its "chat_template", a string or the "default" of a list of named ones (its
    JSON text is not a template)."""
    text = read_text_or_file(spec, "data.chat_template")
    if not spec.lower().endswith(".json"):
        return text
    if text is spec:  # not a file: a template is no file name
        raise TemplateError(f"data.chat_template file {spec!r} not found")
    try:
        value = json.loads(text).get("chat_template")
    except (ValueError, AttributeError):
        value = None
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(value, str):
        raise TemplateError(f"data.chat_template file {spec!r} is JSON without a \"chat_template\" string (or a "
                            "list holding one named \"default\"); give a template text or a .jinja file")
    return value


def set_chat_template(processor: Any, spec: str | None) -> None:
    """Make `data.chat_template` (text or a file) the processor's own, and its tokenizer's: the dataset, the
    multi-turn observations and every exported checkpoint then use the template the model trains with."""
    if not spec:
        return
    text = read_chat_template(spec)
    processor.chat_template = text
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.chat_template = text


def _last_boxed(text: Any) -> str:
    """The content of the last \\boxed{...} in `text` ('' if none): MATH-style solutions hold their answer there."""
    from rllava.rewards.extract import last_boxed

    return last_boxed(str(text)) or ""


def as_list(value: Any) -> list:
    """A row field as a list: a list (or array) as stored, or a list written as text (JSON or a Python literal, as
    some dataset copies store a question's choices)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return list(parsed)
        raise ValueError(f"{value[:80]!r} is text but not a list")
    return list(value)


class RowTemplate:
    """A jinja template (string or file) whose variables are a dataset row's fields; `what` names the setting.

    Besides jinja's own filters it has `last_boxed`: `{{ solution | last_boxed }}` is a MATH-style solution's answer,
    and `as_list`: `{% for c in choices | as_list %}` reads choices stored as a list or as the text of one.
    """

    def __init__(self, spec: str, what: str):
        self.what = what
        self.source = read_text_or_file(spec, what)
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
        env.filters["last_boxed"] = _last_boxed
        env.filters["as_list"] = as_list
        try:
            self._tmpl = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{what}: jinja syntax error on line {e.lineno}: {e.message}") from None

    def render(self, row: dict[str, Any]) -> str:
        try:
            return self._tmpl.render(row)
        except jinja2.UndefinedError as e:
            if str(e.message).endswith("is undefined"):
                raise TemplateError(f"{self.what} uses a field the row does not have: {e.message}") from None
            raise TemplateError(f"{self.what} failed on this row: {e.message}") from None  # e.g. .split on a number
        except Exception as e:  # a filter failing on this row's values
            raise TemplateError(f"{self.what} failed on this row: {type(e).__name__}: {e}") from None


class PromptTemplate:
    """The task's prompt template (jinja; the row's fields are its variables). None: the prompt as is.

    `{{ prompt }}` always means the row's prompt field, whatever `prompt_key` is called.
    """

    def __init__(self, spec: str | None, prompt_key: str = "prompt"):
        self.prompt_key = prompt_key
        self._tmpl = RowTemplate(spec, "data.template") if spec else None
        self.source = self._tmpl.source if self._tmpl else None

    def render(self, row: dict[str, Any]) -> str:
        prompt = row[self.prompt_key]
        return prompt if self._tmpl is None else self._tmpl.render({**row, "prompt": prompt})


def count_markers(text: str) -> tuple[int, int]:
    """(number of `<image>`, number of `<video>`) markers in `text`."""
    return text.count(IMAGE_MARKER), text.count(VIDEO_MARKER)


def content_parts(text: str, n_images: int, n_videos: int) -> list[dict[str, str]]:
    """Chat content items: text split at its `<image>`/`<video>` markers, one media item per marker.

    Media the text does not mark go first, images before videos (the common "image, then question"
    layout). More markers than media is an error.
    """
    marked_images, marked_videos = count_markers(text)
    if marked_images > n_images or marked_videos > n_videos:
        raise TemplateError(f"the prompt has {marked_images} {IMAGE_MARKER} and {marked_videos} {VIDEO_MARKER} "
                            f"markers but the row has {n_images} image(s) and {n_videos} video(s)")
    parts: list[dict[str, str]] = [{"type": "image"}] * (n_images - marked_images)
    parts += [{"type": "video"}] * (n_videos - marked_videos)
    return [dict(p) for p in parts] + split_markers(text)


def split_markers(text: str) -> list[dict[str, str]]:
    """`text` as chat content items, one media item per `<image>`/`<video>` marker."""
    kinds = {IMAGE_MARKER: "image", VIDEO_MARKER: "video"}
    return [{"type": kinds[piece]} if piece in kinds else {"type": "text", "text": piece}
            for piece in _MARKERS.split(text) if piece]


def build_messages(text: str, n_images: int = 0, n_videos: int = 0, system_prompt: str | None = None,
                   multimodal: bool = True) -> list[dict[str, Any]]:
    """Chat messages for one prompt. A text-only model (`multimodal=False`) gets plain string contents."""
    if multimodal:
        messages = [{"role": "user", "content": content_parts(text, n_images, n_videos)}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        return messages
    if n_images or n_videos:
        raise TemplateError(f"the row has {n_images} image(s) and {n_videos} video(s) but the model is text-only")
    if any(count_markers(text)):
        raise TemplateError(f"the prompt has {IMAGE_MARKER}/{VIDEO_MARKER} markers but the model is text-only")
    messages = [{"role": "user", "content": text}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def is_conversation(prompt: Any) -> bool:
    """Whether a row's prompt is a list of chat messages (TRL's conversational and veRL's parquet format)."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def _message_parts(content: Any, i: int) -> list[dict[str, Any]]:
    """A message's content as chat content items: a string split at its markers, or a list of items as it is."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, (list, tuple)) and all(isinstance(c, dict) and c.get("type") for c in content):
        for j, c in enumerate(content):  # a number or list here failed deep inside (str.join) as a bare TypeError
            if c["type"] == "text" and not isinstance(c.get("text"), (str, type(None))):
                raise TemplateError(f"message {i}, content item {j}: a text item's text must be text, got "
                                    f"{c['text']!r:.80}")
        return [{k: v for k, v in c.items() if v is not None} for c in content]  # parquet fills absent keys with None
    raise TemplateError(f"message {i}: content must be text or a list of {{'type': ...}} items, got {content!r:.80}")


def conversation_messages(conversation: list[dict[str, Any]], n_images: int = 0, n_videos: int = 0,
                          system_prompt: str | None = None, multimodal: bool = True,
                          render_user: Any = None) -> tuple[list[dict[str, Any]], str]:
    """Chat messages from a prompt given as messages, and the last user message's text.

    String contents are split at their `<image>`/`<video>` markers (veRL's format); list contents keep their
    items (TRL's). Media no message marks go first in the first user message. `render_user(text)`, the task's
    prompt template, rewrites the last user message's text. `system_prompt` is added if there is no system
    message. A text-only model (`multimodal=False`) gets plain string contents.
    """
    roles = [m.get("role") for m in conversation]
    for i, (m, role) in enumerate(zip(conversation, roles)):
        if not isinstance(role, str) or "content" not in m:
            raise TemplateError(f"message {i}: expected {{'role': ..., 'content': ...}}, got keys {sorted(m)}")
    if "user" not in roles:
        raise TemplateError(f"the messages have no user turn (roles {roles})")
    if roles[-1] == "assistant":  # a TRL "messages" row: its reply would be in the prompt, and the model answer again
        raise TemplateError(f"the messages end with an assistant turn (roles {roles}); a prompt ends where the model's "
                            "reply starts (put the reply in a field of its own, e.g. for data.response_template)")
    last_user = len(roles) - 1 - roles[::-1].index("user")
    messages, user_text = [], ""
    for i, m in enumerate(conversation):
        parts = _message_parts(m["content"], i)
        if i == last_user:
            user_text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
            if render_user is not None:  # the template sees (and may restate) the user's text, which takes the
                user_text = render_user(user_text)  # place of the first text item (media items stay where they are)
                texts = [j for j, p in enumerate(parts) if p["type"] == "text"] or [len(parts)]
                parts = [p for j, p in enumerate(parts) if j not in texts]
                parts.insert(texts[0], {"type": "text", "text": user_text})  # (only media items precede it)
        split: list[dict[str, Any]] = []
        for p in parts:
            split += split_markers(p.get("text") or "") if p["type"] == "text" else [p]
        messages.append({"role": m["role"], "content": split})
    kinds = [p["type"] for m in messages for p in m["content"]]
    marked_images, marked_videos = kinds.count("image"), kinds.count("video")
    if marked_images > n_images or marked_videos > n_videos:
        raise TemplateError(f"the messages mark {marked_images} image(s) and {marked_videos} video(s) but the row "
                            f"has {n_images} image(s) and {n_videos} video(s)")
    first_user = roles.index("user")
    unmarked = [{"type": "image"}] * (n_images - marked_images) + [{"type": "video"}] * (n_videos - marked_videos)
    messages[first_user]["content"] = [dict(p) for p in unmarked] + messages[first_user]["content"]
    if system_prompt and "system" not in roles:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    if not multimodal:
        if n_images or n_videos or any(k != "text" for k in kinds):
            raise TemplateError("the messages have images or videos but the model is text-only")
        messages = [{"role": m["role"], "content": "".join(p.get("text", "") for p in m["content"])}
                    for m in messages]
    return messages, user_text


def apply_chat_template(processor: Any, messages: list[dict[str, Any]], chat_template: str | None = None,
                        **template_kwargs: Any) -> str:
    """The prompt string with the generation prompt appended (`chat_template` overrides the processor's;
    `template_kwargs` are variables for the template, e.g. `enable_thinking`)."""
    kwargs = {"chat_template": chat_template, **template_kwargs} if chat_template else dict(template_kwargs)
    which = "data.chat_template" if chat_template else "the model's chat template"
    try:
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{which}: jinja syntax error on line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:  # the template's own raise_exception ("System role not supported"), a bad field
        raise TemplateError(f"{which} failed on this prompt: {e.message}") from None
    except TypeError as e:  # `'...' + message['content']` in a template written for string contents, given a list
        raise TemplateError(f"{which} failed on this prompt: TypeError: {e} (a template that joins message['content'] "
                            "to text takes string contents only, not the content lists a vision model's prompt "
                            "has)") from None
    except ValueError as e:
        if "chat template" in str(e).lower() or "chat_template" in str(e):
            raise TemplateError("the processor has no chat template; set data.chat_template "
                                "(a jinja string or a .jinja file)") from None
        raise
