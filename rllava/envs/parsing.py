"""Reading one policy turn: a tool call, a final answer, a malformed call, or plain text.

Call formats (registry `CALL_FORMATS`, chosen by `env.call_format`):

- `xml` (default; the Qwen/Hermes convention):
  `<tool_call>{"name": "zoom", "arguments": {"bbox": [0, 0, 10, 10]}}</tool_call>`
- `json`: a bare JSON object with `name` and `arguments` anywhere in the text.
- `tags` (Search-R1 style): the tool's name as a tag around its one required argument,
  `<search>capital of France</search>`, or around a JSON object of its arguments. Tags that
  name no registered tool (`<think>`) are text.

In every format the final answer is `<answer>...</answer>`. If a turn holds both a call and
an answer, whichever starts first wins (text after a call is usually hallucinated), unless the first
one is unclosed and the later one complete: then the first is a mention in prose ("before I give the
<answer> ...") and the complete one is the action. Only the first call of a turn is used. A closing
tag may be missing at the very end of the text, so `</tool_call>` / `</answer>` work as stop strings.
`arguments` may also be a JSON string that holds an object (the OpenAI style). Nothing here raises: a malformed
call (too deeply nested JSON included) becomes `Action(kind="invalid", error=...)`, and the error text is meant to be
shown to the model.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Optional

from rllava.registry import Registry

CALL_FORMATS = Registry("call_format", "tool-call syntaxes the policy writes: fn(text) -> Action")

# The last group is the closing tag, empty where the text ended first.
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|\Z)", re.DOTALL)
_XML_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)
_MAX_JSON_STARTS = 200  # bound the scan for a bare JSON object in long texts


class _JSONError(ValueError):
    """Why a JSON text could not be decoded, as shown to the model."""


def _decode(decode: Callable[..., Any], *args: Any) -> Any:
    """`decode(*args)` (json.loads, a decoder's raw_decode) failing only with _JSONError: a JSONDecodeError, and also
    the RecursionError of deep nesting (a repetition loop of '[' is common in rollouts) and the ValueError of an
    over-long integer."""
    try:
        return decode(*args)
    except json.JSONDecodeError as e:
        raise _JSONError(_where(e)) from None
    except RecursionError:
        raise _JSONError("it is nested too deeply") from None
    except ValueError as e:
        raise _JSONError(str(e)) from None


def _loads(text: str) -> Any:
    return _decode(json.loads, text)


@dataclass
class Action:
    """One parsed turn. `kind`: tool (name, arguments), answer (answer), invalid (error), none (plain text)."""

    kind: Literal["tool", "answer", "invalid", "none"]
    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    answer: str = ""


def parse_action(text: str, fmt: str = "xml") -> Action:
    """Parse one turn's text with the named call format (see module doc)."""
    return CALL_FORMATS.get(fmt)(text)


def format_example(fmt: str) -> str:
    """How a call looks in the named format (for prompts and error messages)."""
    return CALL_FORMATS.entry(fmt).meta["example"]


class _Found(NamedTuple):
    """A call or answer found in a turn: where it starts, whether it is complete (closed by its closing tag, or a
    whole JSON object, rather than cut by the end of the text), and what it is."""

    start: int
    closed: bool
    action: Action


def _answer_at(text: str) -> Optional[_Found]:
    m = _ANSWER.search(text)
    return _Found(m.start(), bool(m.group(2)), Action("answer", answer=m.group(1).strip())) if m else None


def _first(text: str, call: Optional[_Found]) -> Action:
    """The earlier of the call and the answer, unless the earlier is unclosed and the later complete; plain text
    if neither."""
    found = sorted((c for c in (call, _answer_at(text)) if c is not None), key=lambda c: c.start)
    if not found:
        return Action("none")
    if len(found) == 2 and not found[0].closed and found[1].closed:
        # The unclosed one runs to the end of the text, over the complete one: it is a mention, not the action.
        return found[1].action
    return found[0].action


def decode_call(payload: Any, example: str) -> Action:
    """A tool Action from a decoded JSON value, or an invalid one saying what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not payload["name"]:
        return Action("invalid", error=f'a tool call must be a JSON object with a "name" string and an '
                                        f'"arguments" object, e.g. {example}')
    args = payload.get("arguments", {})
    if isinstance(args, str):  # OpenAI style: arguments serialised as a string
        try:
            args = _loads(args) if args.strip() else {}
        except _JSONError as e:
            return Action("invalid", name=payload["name"], error=f'"arguments" string is not valid JSON: {e}')
    if not isinstance(args, dict):
        return Action("invalid", name=payload["name"], error=f'"arguments" must be a JSON object, e.g. {example}')
    return Action("tool", name=payload["name"], arguments=args)


def _where(e: json.JSONDecodeError) -> str:
    return f"{e.msg} at line {e.lineno} column {e.colno}"


XML_EXAMPLE = '<tool_call>{"name": "TOOL_NAME", "arguments": {"ARG": VALUE}}</tool_call>'
JSON_EXAMPLE = '{"name": "TOOL_NAME", "arguments": {"ARG": VALUE}}'
TAGS_EXAMPLE = "<TOOL_NAME>ARGUMENT</TOOL_NAME>"


@CALL_FORMATS.register("xml", example=XML_EXAMPLE)
def parse_xml(text: str) -> Action:
    """<tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen/Hermes); answer in <answer>...</answer>."""
    m = _XML_CALL.search(text)
    call = None
    if m:
        body = m.group(1).strip()
        fenced = _FENCE.match(body)  # models sometimes wrap the JSON in a ``` block
        body = fenced.group(1) if fenced else body
        try:
            action = decode_call(_loads(body), XML_EXAMPLE)
        except _JSONError as e:
            action = Action("invalid", error=f"the text inside <tool_call> is not valid JSON ({e}); "
                                             f"expected {XML_EXAMPLE}")
        call = _Found(m.start(), bool(m.group(2)), action)
    return _first(text, call)


@CALL_FORMATS.register("json", example=JSON_EXAMPLE)
def parse_json(text: str) -> Action:
    """A bare {"name": ..., "arguments": {...}} object anywhere in the text; answer in <answer>...</answer>."""
    decoder = json.JSONDecoder()
    errors: dict[int, str] = {}
    call = None
    for n, m in enumerate(re.finditer(r"\{", text)):
        if n >= _MAX_JSON_STARTS:
            break
        try:
            value, _ = _decode(decoder.raw_decode, text, m.start())
        except _JSONError as e:
            errors[m.start()] = str(e)
            continue
        if isinstance(value, dict) and "name" in value:
            call = _Found(m.start(), True, decode_call(value, JSON_EXAMPLE))
            break
    name_key = re.search(r'"name"\s*:', text)
    if call is None and name_key:
        # An attempted call that does not parse: report the error of the brace that opens it.
        starts = [s for s in errors if s < name_key.start()]
        if starts:
            err = errors[max(starts)]
            call = _Found(max(starts), False, Action("invalid", error=f"the tool call is not valid JSON ({err}); "
                                                                     f"expected {JSON_EXAMPLE}"))
    return _first(text, call)


@CALL_FORMATS.register("tags", example=TAGS_EXAMPLE)
def parse_tags(text: str) -> Action:
    """<search>query</search>: a tool's name as the tag, its one required argument (or a JSON object) inside."""
    from rllava.envs.base import TOOLS  # the tools define which tags are calls

    # Only tags naming a tool are matched: an unclosed other tag (<br>, List<T>) would run to the end of
    # the text and hide a call after it.
    m = _tool_tags(tuple(sorted(TOOLS.names()))).search(text)
    call = None
    if m:
        action = _tag_call(m.group(1), m.group(2).strip(), TOOLS.entry(m.group(1)).meta)
        call = _Found(m.start(), bool(m.group(3)), action)
    return _first(text, call)


@lru_cache(maxsize=16)
def _tool_tags(names: tuple[str, ...]) -> re.Pattern:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"<({alternatives})>(.*?)(</\1>|\Z)", re.DOTALL)


def _tag_call(name: str, body: str, meta: dict[str, Any]) -> Action:
    example = f"<{name}>ARGUMENT</{name}>"
    if body.startswith("{"):
        try:
            return decode_call({"name": name, "arguments": _loads(body)}, example)
        except _JSONError as e:
            return Action("invalid", name=name, error=f"the JSON inside <{name}> is not valid ({e})")
    schema = meta.get("parameters", {})
    required = schema.get("required", [])
    if len(required) != 1:
        return Action("invalid", name=name, error=f"{name} takes several arguments: write them as a JSON object "
                                                   f"inside <{name}></{name}>")
    arg = required[0]
    if schema.get("properties", {}).get(arg, {}).get("type", "string") == "string":
        return Action("tool", name=name, arguments={arg: body})
    try:
        return Action("tool", name=name, arguments={arg: _loads(body)})
    except _JSONError as e:
        return Action("invalid", name=name, error=f"the {arg} inside <{name}> is not valid JSON ({e})")


def instructions(schemas: list[dict[str, Any]], fmt: str = "xml") -> str:
    """System-prompt text listing the tools (one JSON schema per line) and how to call them and answer."""
    tools = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    return ("You may call the tools below. Their signatures are inside <tools></tools>:\n"
            f"<tools>\n{tools}\n</tools>\n"
            f"To call a tool, write exactly one call and stop:\n{format_example(fmt)}\n"
            "The result comes back after the call. When you are done, give the final answer as "
            "<answer>...</answer>.")

