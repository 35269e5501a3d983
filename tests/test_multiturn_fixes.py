"""Multi-turn rollout details: no BOS inside an episode, demonstrations end their turns as the policy does,
templates that re-render earlier turns (Qwen3), and cut-off turns that never reach the environment."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from rllava.config import load_config
from rllava.envs import Environment, EpisodeOutcome, Observation, StepResult

# Qwen3's stock template in small: an assistant turn with no user turn after it gets a <think> block, an earlier
# one has its <think> block dropped, so adding a message re-renders the turns before it.
QWEN3_STYLE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set content = m.content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- if loop.last -%}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _processor(tiny_model_factory, family: str):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_factory(family))
    return processor, getattr(processor, "tokenizer", processor)


def test_observations_add_no_bos_inside_the_episode(tiny_model_factory):
    from rllava.roles.multiturn import ObservationRenderer

    processor, tok = _processor(tiny_model_factory, "gemma3")
    tok.add_bos_token = True  # as a real Gemma 3 tokenizer does
    assert tok("look")["input_ids"][0] == tok.bos_token_id
    renderer = ObservationRenderer(processor)
    for images in ([], [Image.new("RGB", (64, 64), (255, 0, 0))]):
        ids, _, _ = renderer.encode("look", images)
        assert tok.bos_token_id not in ids, images
        assert ids[:3] == tok(renderer.render("look", len(images)), add_special_tokens=False)["input_ids"][:3]


def test_demonstrations_end_their_turns_with_the_templates_turn_close(tiny_model_factory):
    """A real Gemma 3 lists `<eos>` first among its eos ids, yet closes its turns with `<end_of_turn>`, as the policy
    does: every kind of demonstration must end its turns with `<end_of_turn>` too."""
    from rllava.data.types import Episode, Prompt
    from rllava.engines.hf_rollout import Sampling
    from rllava.pipelines.agentic import HintTurns, demonstration_rollout
    from rllava.pipelines.hooks import demonstration_episodes
    from rllava.pipelines.sft import SFTPipeline
    from rllava.roles.multiturn import HINT_KEY

    processor, tok = _processor(tiny_model_factory, "gemma3")
    eos, end = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    cfg = load_config(None, ["env.name=tools", "env.tools=[zoom]", "data.response_template={{ answer }}",
                             "algorithm.hint_steps=10", "algorithm.hint_ratio_high=1.0", "algorithm.hint_ratio_low=1.0"])
    ctx = SimpleNamespace(cfg=cfg, processor=processor, tokenizer=tok, extra={"eos_ids": [eos, end]},
                          reward=SimpleNamespace(score=lambda episodes: {}))
    trainer = SimpleNamespace(cfg=cfg, ctx=ctx, step=0)
    prompt = Prompt(input_ids=tok("q", add_special_tokens=False)["input_ids"], index=0,
                    meta={"answer": "3", "demo_turns": ["think", "<answer>3</answer>"]})

    (sft,), _ = SFTPipeline(cfg).collect(trainer, [prompt])  # sft
    (expert,) = demonstration_episodes(trainer, [[Episode(prompt=prompt)]])  # mix / switch / sft in RL
    (played,) = demonstration_rollout(ctx).generate([prompt], Sampling(n=1))  # multi-turn, played through the env
    assert sft.response_ids[-1] == expert.response_ids[-1] == played.response_ids[-1] == end
    (hinted,) = HintTurns().before_rollout(trainer, [prompt], {})  # UFT: the whole first turn is hinted
    first_turn, whole = hinted.meta[HINT_KEY][0]
    assert whole and first_turn[-1] == end

    from rllava.roles.multiturn import turn_end_id

    assert turn_end_id(processor, [eos, end]) == end
    assert turn_end_id(processor, [eos]) == eos  # the turn close is no eos id: the first eos id, as before


def test_a_template_that_rerenders_earlier_turns_still_renders_observations(tiny_model_factory):
    from rllava.roles.multiturn import ObservationRenderer

    _, tok = _processor(tiny_model_factory, "qwen3")
    tok.chat_template = QWEN3_STYLE
    renderer = ObservationRenderer(tok, multimodal=False)
    assert renderer.turn_close() == (tok.convert_tokens_to_ids("<|im_end|>"), "\n")
    assert renderer.render("tool says 3", 0) == "\n<|im_start|>user\ntool says 3<|im_end|>\n<|im_start|>assistant\n"
    ids, _, _ = renderer.encode("tool says 3", [])
    assert tok.decode(ids) == "\n<|im_start|>user\ntool says 3<|im_end|>\n<|im_start|>assistant\n"


class AnswerEnv(Environment):
    """Every step it reads is a well-formed final answer worth a tool reward: what a cut-off turn must not get."""

    def reset(self, sample_meta, images):
        self.steps = []
        return None

    def step(self, action_text):
        self.steps.append(action_text)
        return StepResult(None, 0.5, True, {"stop": "answer", "turn_reward": 0.5})

    def outcome(self):
        return EpisodeOutcome(answer="3", format_ok=bool(self.steps))


class ObserveEnv(AnswerEnv):
    """Answers the first turn with an observation; its later steps are final answers."""

    def step(self, action_text):
        if self.steps:
            return super().step(action_text)
        self.steps.append(action_text)
        return StepResult(Observation(text="tool says 3"), 0.5, False, {"action": "tool", "turn_reward": 0.5})


class DoneEnv(AnswerEnv):
    """Ends the episode with done=True and no stop reason (a user's environment): that is its answer."""

    def step(self, action_text):
        self.steps.append(action_text)
        return StepResult(None, 0.5, True, {"turn_reward": 0.5})


@pytest.mark.parametrize("make_env, finishes, budget, stop", [
    (AnswerEnv, True, 512, "answer"),  # a turn that ends itself is stepped as before
    (DoneEnv, True, 512, "answer"),  # was "budget", a cut-off, so the answer reward never paid it
    (AnswerEnv, False, 512, "length"),  # cut by max_new_tokens
    (AnswerEnv, False, 3, "budget"),  # cut by max_total_tokens
    (ObserveEnv, False, 512, "length"),  # a second turn cut off after an observation: the first turn's reward stays
])
def test_a_cut_off_turn_never_reaches_the_environment(tiny_model_factory, make_env, finishes, budget, stop):
    from rllava.config import RolloutConfig
    from rllava.data.types import Prompt
    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
    from rllava.models.load import get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.roles.multiturn import HINT_KEY, MultiTurnRollout, ObservationRenderer
    from rllava.roles.rollout import Rollout

    model, processor = load_model_and_processor(load_config(None, [f"model.path={tiny_model_factory('qwen2')}"]).model)
    tok, pad = get_tokenizer(processor), pad_token_id(processor)
    vocab = max(len(tok), model.get_output_embeddings().weight.shape[0])
    eos = list(range(vocab)) if finishes else [tok.eos_token_id]  # every token ends a turn, or none can
    engine = HFRolloutEngine(model, pad_id=pad, eos_ids=eos, suppress_ids=None if finishes else eos)
    envs = []
    mt = MultiTurnRollout(Rollout(engine, tok, RolloutConfig(max_new_tokens=4)),
                          lambda: envs.append(make_env()) or envs[-1], ObservationRenderer(processor),
                          max_total_tokens=budget)
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    meta = {}
    if make_env is ObserveEnv:  # the first turn is a whole hinted turn, ended by EOS: it reaches the environment
        meta = {HINT_KEY: [(tok("call", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], True)]}
    torch.manual_seed(0)
    (ep,) = mt.generate([Prompt(input_ids=ids, text="hello", meta=meta)], Sampling(n=1, temperature=1.0, max_new_tokens=4))
    assert ep.info["stop"] == stop
    assert ep.finished == ep.info["format_ok"] == finishes
    if make_env is ObserveEnv:
        assert envs[0].steps == ["call"] and ep.turn_rewards == [0.5, 0.0] and ep.info["turns"] == 2
    else:
        assert len(envs[0].steps) == int(finishes) and ep.turn_rewards == [0.5 if finishes else 0.0]
    assert len(ep.response_ids) <= budget
