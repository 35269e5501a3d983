"""Environment API: tool-call parsing, ToolEnv driven by scripted turns, registries, episode reward."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rllava.config import EnvConfig
from rllava.envs import (
    ENVIRONMENTS,
    TOOLS,
    Observation,
    ToolEnv,
    ToolError,
    check_arguments,
    episode_reward,
    make_environment,
    parse_action,
    tool_schemas,
)
from rllava.registry import UnknownNameError


def call(name: str, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


# ---- parsing


def test_xml_tool_call():
    a = parse_action('I should look closer.\n<tool_call>\n{"name": "zoom", "arguments": {"bbox": [1, 2, 3, 4]}}\n'
                     '</tool_call>')
    assert (a.kind, a.name, a.arguments, a.error) == ("tool", "zoom", {"bbox": [1, 2, 3, 4]}, "")


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "zoom", "arguments": {"bbox": [1, 2, 3, 4]}}',  # closing tag eaten by a stop string
    '<tool_call>```json\n{"name": "zoom", "arguments": {"bbox": [1, 2, 3, 4]}}\n```</tool_call>',  # fenced
    '<tool_call>{"name": "zoom", "arguments": "{\\"bbox\\": [1, 2, 3, 4]}"}</tool_call>',  # OpenAI-style string
])
def test_xml_tool_call_variants_models_write(text):
    a = parse_action(text)
    assert (a.kind, a.name, a.arguments) == ("tool", "zoom", {"bbox": [1, 2, 3, 4]})


def test_answer_and_which_comes_first():
    assert parse_action("thinking... <answer> 42 </answer>").answer == "42"
    first_answer = parse_action("<answer>7</answer> " + call("zoom", bbox=[0, 0, 1, 1]))
    assert first_answer.kind == "answer" and first_answer.answer == "7"
    first_call = parse_action(call("zoom", bbox=[0, 0, 1, 1]) + " <answer>7</answer>")
    assert first_call.kind == "tool"
    assert parse_action("just some text with {braces}").kind == "none"


@pytest.mark.parametrize("fmt, text, expected", [
    # an unclosed <answer> mentioned before a complete call: the call is the action
    ("xml", "I should not give the <answer> yet; first zoom.\n" + call("zoom", bbox=[0, 0, 10, 10]),
     ("tool", "zoom", {"bbox": [0, 0, 10, 10]}, "")),
    ("tags", "Before writing <answer> I must look it up.\n<search>Velmora flag</search>",
     ("tool", "search", {"query": "Velmora flag"}, "")),
    ("json", 'No <answer> yet: {"name": "search", "arguments": {"query": "cats"}}',
     ("tool", "search", {"query": "cats"}, "")),
    # symmetric: an unclosed call mentioned before a complete answer
    ("xml", "The <tool_call> format is not needed here. <answer>7</answer>", ("answer", "", {}, "7")),
    ("tags", "I could <search> but I know it. <answer>Paris</answer>", ("answer", "", {}, "Paris")),
    # with nothing complete after it, an unclosed one is still read (a stop string ate its closing tag)
    ("xml", "The code is <answer>AB12", ("answer", "", {}, "AB12")),
    ("tags", "<search>flag of <answer>", ("tool", "search", {"query": "flag of <answer>"}, "")),
])
def test_an_unclosed_tag_before_a_complete_one_is_a_mention(fmt, text, expected):
    a = parse_action(text, fmt)
    assert (a.kind, a.name, a.arguments, a.answer) == expected


def test_an_answer_mentioned_before_a_call_runs_the_call():
    env = make_env(max_turns=3)
    env.reset({"answer": "7"}, [quadrants()])
    r = env.step("I should not give the <answer> yet; first zoom.\n" + call("zoom", bbox=[0, 0, 10, 10]))
    assert not r.done and r.info["action"] == "tool" and env.outcome().num_tool_calls == 1
    assert env.outcome().answer is None and not env.outcome().format_ok


@pytest.mark.parametrize("text, message", [
    ('<tool_call>{"name": "zoom", "arguments": {"bbox": [1, 2,}}</tool_call>',
     "not valid JSON (Expecting value at line 1 column 46)"),  # the "}" after "2,"
    ('<tool_call>{"arguments": {}}</tool_call>', 'must be a JSON object with a "name" string'),
    ('<tool_call>[1, 2]</tool_call>', 'must be a JSON object with a "name" string'),
    ('<tool_call>{"name": "zoom", "arguments": [1, 2]}</tool_call>', '"arguments" must be a JSON object'),
    ('<tool_call>{"name": "zoom", "arguments": "{bad"}</tool_call>', '"arguments" string is not valid JSON'),
    ("<tool_call></tool_call>", "not valid JSON"),
])
def test_malformed_calls_are_invalid_with_a_readable_error(text, message):
    a = parse_action(text)
    assert a.kind == "invalid"
    assert message in a.error
    assert "<tool_call>" in a.error or "name" in a.error  # the error shows or names the expected shape


def test_parsing_never_raises_on_junk():
    for text in ["", "<tool_call>", "<answer>", "{" * 500, '"name": {', "<tool_call>null</tool_call>",
                 '{"name": 5}', "\x00\uffff<tool_call>\n</tool_call>"]:
        for fmt in ("xml", "json", "tags"):
            assert parse_action(text, fmt).kind in ("tool", "answer", "invalid", "none")


@pytest.mark.parametrize("fmt, text", [
    ("xml", "Let me call the tool. <tool_call>" + "[" * 5000),
    ("xml", '<tool_call>{"name": "zoom", "arguments": "' + "[" * 5000 + '"}</tool_call>'),  # OpenAI-style string
    ("json", '{"name": "search", "arguments": ' + "[" * 5000),
    ("tags", '<search>{"q": ' + "[" * 5000 + "</search>"),
    ("tags", "<zoom>" + "[" * 5000 + "</zoom>"),
    ("xml", '<tool_call>{"name": "zoom", "arguments": {"bbox": ' + "9" * 5000 + "}}</tool_call>"),  # int too long
])
def test_deeply_nested_or_huge_json_is_an_invalid_call_not_a_crash(fmt, text):
    a = parse_action(text, fmt)
    assert a.kind == "invalid" and "not valid" in a.error
    env = make_env(tools=["zoom", "search"], call_format=fmt)
    env.reset({"answer": "7"}, [])
    r = env.step(text)  # a RecursionError here used to end the whole rollout
    assert not r.done and r.observation.text.startswith("Your last message was not understood")


@pytest.mark.parametrize("text", [
    "Let me look it up.<br> <search>capital of France</search>",
    "In Java a List<T> holds items; let me check. <search>capital of France</search>",
    "<x> unclosed and <y>also <search>capital of France</search> trailing",
])
def test_tags_format_an_unclosed_non_tool_tag_does_not_hide_a_call(text):
    a = parse_action(text, "tags")
    assert (a.kind, a.name, a.arguments) == ("tool", "search", {"query": "capital of France"})


def test_json_format():
    a = parse_action('Let me search. {"name": "search", "arguments": {"query": "cats", "k": 2}} done', "json")
    assert (a.kind, a.name, a.arguments) == ("tool", "search", {"query": "cats", "k": 2})
    bad = parse_action('Sets like {1, 2} aside: {"name": "search", "arguments": {"query": }}', "json")
    assert bad.kind == "invalid" and "not valid JSON (Expecting value" in bad.error
    assert parse_action("the set {1, 2} has two elements", "json").kind == "none"
    assert parse_action('<answer>{"x": 1}</answer>', "json").kind == "answer"


@pytest.mark.parametrize("text, expected", [
    ("<think>look it up</think><search>capital of France</search>", ("tool", "search", {"query": "capital of France"})),
    ("<search>open at the end", ("tool", "search", {"query": "open at the end"})),  # "</search>" as a stop string
    ("<zoom>[1, 2, 30, 40]</zoom>", ("tool", "zoom", {"bbox": [1, 2, 30, 40]})),  # a non-string argument is JSON
    ('<zoom>{"bbox": [1, 2, 3, 4], "image_index": 1}</zoom>', ("tool", "zoom", {"bbox": [1, 2, 3, 4], "image_index": 1})),
    ("<python>print(1 < 2)</python>", ("tool", "python", {"code": "print(1 < 2)"})),
    ("<answer>Paris</answer> <search>more</search>", ("answer", "", {})),
    ("<think>no tool here</think> so Paris", ("none", "", {})),
])
def test_tags_format(text, expected):
    a = parse_action(text, "tags")
    assert (a.kind, a.name, a.arguments) == expected


def test_tags_format_errors_say_what_to_write():
    assert "bbox inside <zoom> is not valid JSON" in parse_action("<zoom>the top left</zoom>", "tags").error
    assert "JSON inside <search> is not valid" in parse_action("<search>{query: x}</search>", "tags").error


def test_unknown_format_names_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'xml'"):
        parse_action("x", "xmll")


# ---- ToolEnv


def quadrants() -> Image.Image:
    a = np.zeros((80, 100, 3), np.uint8)
    a[:40, :50], a[:40, 50:], a[40:, :50], a[40:, 50:] = (255, 0, 0), (0, 0, 255), (0, 255, 0), (250, 250, 250)
    return Image.fromarray(a)


def exact(answer: str, meta: dict) -> float:
    return float(answer == meta["answer"])


def make_env(**kw) -> ToolEnv:
    opts = dict(tools=["zoom"], max_turns=4, answer_reward=exact, tool_reward=0.1, invalid_penalty=0.2,
                tool_error_penalty=0.05)
    return ToolEnv(**{**opts, **kw})


def test_scripted_episode_tool_invalid_error_answer():
    env = make_env()
    assert env.reset({"answer": "7"}, [quadrants()]) is None

    r = env.step("Look closer. " + call("zoom", bbox=[50, 0, 100, 40]))
    assert not r.done and r.reward == pytest.approx(0.1) and r.info["turn_reward"] == pytest.approx(0.1)
    assert r.observation.role == "tool" and len(r.observation.images) == 1
    assert r.observation.images[0].size == (224, 179)
    assert (np.asarray(r.observation.images[0]) == (0, 0, 255)).all()  # the blue quadrant
    assert r.info["tool"] == "zoom" and r.info["turn"] == 1

    r = env.step('<tool_call>{"name": "zoom", "arguments": {"bbox": [1, 2,}}</tool_call>')
    assert not r.done and r.reward == pytest.approx(-0.2)
    assert r.observation.role == "user" and "not valid JSON" in r.observation.text and r.info["action"] == "invalid"

    r = env.step(call("zoom", bbox=[500, 500, 600, 600]))
    assert not r.done and r.reward == pytest.approx(-0.05)
    assert r.observation.text.startswith("Error: zoom: bbox [500, 500, 600, 600] lies outside the image")

    r = env.step("<answer>7</answer>")
    assert r.done and r.observation is None and r.reward == 1.0
    assert r.info["stop"] == "answer" and r.info["answer_reward"] == 1.0

    out = env.outcome()
    assert out.answer == "7" and out.answer_reward == 1.0 and out.num_tool_calls == 1
    assert out.turn_rewards == pytest.approx([0.1, -0.2, -0.05, 0.0])
    assert out.format_ok is False  # one malformed turn
    assert len(env.ctx.images) == 2  # the prompt image and the zoomed crop
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("<answer>7</answer>")


def test_zoom_on_a_zoomed_image_and_clean_format():
    env = make_env()
    env.reset({"answer": "x"}, [quadrants()])
    env.step(call("zoom", bbox=[40, 30, 60, 50]))  # 20 x 20 over the centre -> 224 x 224, four colours
    r = env.step(call("zoom", image_index=1, bbox=[150, 150, 224, 224]))  # inside the white part, clear of the blur
    assert (np.asarray(r.observation.images[0]) == (250, 250, 250)).all()
    r = env.step("<answer>nope</answer>")
    out = env.outcome()
    assert r.done and r.reward == 0.0 and out.format_ok and out.stop_reason == "answer"


def test_turn_limit_ends_the_episode_without_running_the_last_call():
    env = make_env(max_turns=2)
    env.reset({"answer": "7"}, [quadrants()])
    assert not env.step(call("zoom", bbox=[0, 0, 10, 10])).done
    r = env.step(call("zoom", bbox=[0, 0, 10, 10]))
    assert r.done and r.observation is None and r.info["stop"] == "max_turns" and r.info["tool_skipped"]
    out = env.outcome()
    assert out.num_tool_calls == 1 and out.answer is None and not out.format_ok
    assert out.turn_rewards == pytest.approx([0.1, 0.0]) and out.stop_reason == "max_turns"


def test_plain_text_ends_or_is_flagged():
    env = make_env()
    env.reset({"answer": "7"}, [])
    r = env.step("I think it is 7.")
    assert r.done and r.info["stop"] == "no_action" and env.outcome().answer is None
    env = make_env(no_action="invalid")
    env.reset({"answer": "7"}, [])
    r = env.step("I think it is 7.")
    assert not r.done and r.reward == pytest.approx(-0.2) and "no tool call and no <answer>" in r.observation.text


def test_unknown_tool_failing_tool_and_image_budget():
    @TOOLS.register("test_boom", parameters={"type": "object", "properties": {}})
    def boom(args: dict, ctx) -> Observation:
        """Always fails."""
        raise RuntimeError("kaput")

    env = make_env(tools=["zoom", "test_boom"], max_images=2, max_turns=6)
    env.reset({"answer": "7"}, [quadrants()])
    r = env.step(call("draw", x=1))
    assert r.observation.text == "Error: unknown tool 'draw'; available tools: zoom, test_boom"
    r = env.step(call("test_boom"))
    assert r.observation.text == "Error: test_boom failed: RuntimeError: kaput" and r.reward == pytest.approx(-0.05)
    assert not env.step(call("zoom", bbox=[0, 0, 10, 10])).observation.text.startswith("Error")
    r = env.step(call("zoom", bbox=[0, 0, 10, 10]))  # a third image would exceed max_images=2
    assert r.observation.text == "Error: image limit reached: at most 2 images per episode"
    assert r.observation.images == [] and len(env.ctx.images) == 2


def test_an_unknown_tool_name_is_echoed_only_in_part():
    env = make_env()
    env.reset({"answer": "7"}, [])
    r = env.step(call("z" * 50000))
    assert r.observation.text.startswith("Error: unknown tool 'zzz") and len(r.observation.text) < 300
    assert "(50002 characters)" in r.observation.text  # says how long the name was


def test_reset_starts_a_fresh_episode():
    env = make_env()
    env.reset({"answer": "1"}, [quadrants()])
    env.step(call("zoom", bbox=[0, 0, 10, 10]))
    env.reset({"answer": "2"}, [quadrants()])
    assert env.outcome().turn_rewards == [] and len(env.ctx.images) == 1
    assert env.step("<answer>2</answer>").reward == 1.0
    with pytest.raises(RuntimeError, match="before reset"):
        make_env().step("<answer>1</answer>")


def test_json_call_format_env():
    env = make_env(call_format="json")
    env.reset({"answer": "7"}, [quadrants()])
    r = env.step('{"name": "zoom", "arguments": {"bbox": [0, 0, 50, 40]}}')
    assert r.info["action"] == "tool" and len(r.observation.images) == 1


def test_bad_construction_is_reported():
    with pytest.raises(UnknownNameError, match="did you mean 'zoom'"):
        ToolEnv(tools=["zom"])
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        ToolEnv(max_turns=0)


# ---- registries, schemas, config


def test_registries_list_the_built_ins():
    assert {"zoom", "python", "search"} <= set(TOOLS.names())
    assert "tools" in ENVIRONMENTS
    zoom = tool_schemas(["zoom"])[0]
    assert zoom["type"] == "function" and zoom["function"]["name"] == "zoom"
    assert zoom["function"]["parameters"]["required"] == ["bbox"]
    assert zoom["function"]["description"].startswith("Crop a region")


def test_instructions_show_tools_and_format():
    env = make_env(tools=["zoom", "search"])
    text = env.instructions()
    lines = text.splitlines()
    tools = [json.loads(line) for line in lines[lines.index("<tools>") + 1: lines.index("</tools>")]]
    assert [t["function"]["name"] for t in tools] == ["zoom", "search"]
    assert '<tool_call>{"name": "TOOL_NAME", "arguments": {"ARG": VALUE}}</tool_call>' in text
    assert "<answer>...</answer>" in text
    assert '{"name": "TOOL_NAME"' in make_env(call_format="json").instructions()


def test_make_environment_from_config(tmp_path):
    cfg = EnvConfig(name="tools", tools=["zoom", "python"], max_turns=3, max_images=5, tool_timeout_s=2.5,
                    tool_memory_mb=300, corpus_path=str(tmp_path / "c.txt"))
    env = make_environment(cfg, answer_reward=exact)
    assert isinstance(env, ToolEnv) and env.tools == ["zoom", "python"]
    assert (env.max_turns, env.max_images, env.answer_reward) == (3, 5, exact)
    assert env.settings.python.timeout_s == 2.5 and env.settings.python.memory_mb == 300
    assert env.settings.corpus_path == str(tmp_path / "c.txt")


def test_zoom_box_frame_from_config_reaches_the_tool():
    """env.zoom_box_frame=input: the model's box in the pixels it saw (50 x 40) crops the original's region."""
    from rllava.config import ConfigError, load_config
    from rllava.envs import ToolSettings

    cfg = load_config(None, ["env.name=tools", "env.tools=[zoom]", "env.zoom_box_frame=input"])
    env = make_environment(cfg.env)
    env.reset({"image_sizes": [[100, 80]], "input_image_sizes": [[50, 40]]}, [quadrants()])
    r = env.step(call("zoom", bbox=[25, 0, 50, 20]))  # the blue quadrant, [50, 0, 100, 40] of the original
    assert (np.asarray(r.observation.images[0]) == (0, 0, 255)).all() and r.observation.images[0].size == (224, 179)
    assert r.observation.text.startswith("Zoomed into [25, 0, 50, 20] of image 0")
    assert make_environment(EnvConfig(name="tools", tools=["zoom"])).settings.zoom_box_frame == "pixels"
    with pytest.raises(ConfigError, match=r"env.zoom_box_frame='norm_1000' is not one of .*did you mean 'norm1000'"):
        load_config(None, ["env.zoom_box_frame=norm_1000"])
    with pytest.raises(ValueError, match=r"env.zoom_box_frame='px' is not one of"):
        ToolEnv(settings=ToolSettings(zoom_box_frame="px"))


def test_check_arguments_fills_defaults_and_types():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 3}, "x": {"type": "number"},
                                               "s": {"type": "string"}}, "required": ["s"]}
    assert check_arguments({"s": "a"}, schema, "t") == {"n": 3, "s": "a"}
    assert check_arguments({"s": "a", "x": 2}, schema, "t")["x"] == 2  # an integer is a number
    with pytest.raises(ToolError, match="argument 'n' must be of type integer, got number"):
        check_arguments({"s": "a", "n": 1.5}, schema, "t")
    with pytest.raises(ToolError, match="arguments must be a JSON object"):
        check_arguments([1], schema, "t")


# ---- episode reward


def test_episode_reward_combines_answer_format_and_tools():
    turns = [0.1, -0.2, 0.1, 0.0]
    assert episode_reward(1.0, True, turns, {}) == pytest.approx(1.0 + 0.0)  # default: answer + tools, format 0
    w = {"answer": 1.0, "format": 0.5, "tool": 2.0}
    assert episode_reward(1.0, True, turns, w) == pytest.approx(1.0 + 0.5 + 2.0 * 0.0)
    assert episode_reward(0.0, False, [0.1, 0.1, 0.1], w) == pytest.approx(0.6)
    assert episode_reward(0.0, False, [0.1] * 10, {"tool_cap": 0.3}) == pytest.approx(0.3)  # no farming
    assert episode_reward(0.5, False, [-0.2] * 3, {"tool_cap": 0.3}) == pytest.approx(0.5 - 0.6)  # penalties stay
    with pytest.raises(ValueError, match=r"unknown episode reward weight\(s\) \['answr'\]"):
        episode_reward(1.0, True, [], {"answr": 1.0})


def test_episode_reward_from_an_env_outcome():
    env = make_env()
    env.reset({"answer": "7"}, [quadrants()])
    env.step(call("zoom", bbox=[0, 0, 10, 10]))
    env.step("<answer>7</answer>")
    out = env.outcome()
    total = episode_reward(out.answer_reward, out.format_ok, out.turn_rewards, {"format": 0.5})
    assert total == pytest.approx(1.0 + 0.5 + 0.1)
