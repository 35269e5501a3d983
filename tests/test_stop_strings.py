"""rollout.stop: a response ends with the token that completes a stop string (kept in it), as with EOS;
in multi-turn episodes such a turn is closed with EOS, untrained, before the observation."""
from __future__ import annotations

import string

import pytest
import torch

from rllava.config import ConfigError, RolloutConfig, load_config
from rllava.data.types import Batch, Prompt
from rllava.engines.hf_rollout import HFRolloutEngine, Sampling, response_end
from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, pad_token_id
from rllava.models.logprobs import response_logprobs


@pytest.fixture(scope="module")
def text_model(tiny_model_factory):
    from rllava.config import ModelConfig

    model, tok = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2"))))
    return model, tok


def test_response_end_by_hand(text_model):
    _, tok = text_model
    ids = tok("ab</tool_call>cd", add_special_tokens=False)["input_ids"]
    through = next(k for k in range(1, len(ids) + 1) if "</tool_call>" in tok.decode(ids[:k]))
    assert response_end(ids, set(), ["</tool_call>"], tok) == through < len(ids)
    assert response_end(ids, set(), [], tok) is None and response_end(ids, set(), ["zz"], tok) is None
    assert response_end(ids, {ids[1]}, ["</tool_call>"], tok) == 2  # an earlier EOS wins
    assert response_end(ids + [7], {7}, ["cd"], tok) == len(ids)  # an earlier stop string wins
    with pytest.raises(ConfigError, match="rollout.stop"):
        load_config(None, ["rollout.stop=['']"])


def test_generation_stops_at_the_string_and_counts_as_finished(text_model):
    model, tok = text_model
    prompt = Prompt(input_ids=tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    sampling = Sampling(n=1, temperature=1.0, max_new_tokens=16, logprobs=True)
    kw = dict(pad_id=pad_token_id(tok), eos_ids=eos_token_ids(model, tok), processor=tok)
    torch.manual_seed(0)
    (free,) = HFRolloutEngine(model, **kw).generate([prompt], sampling)
    ids = free.response_ids
    stop = tok.decode(ids[:8])[len(tok.decode(ids[:6])):]  # what tokens 7 and 8 write
    want = next(k for k in range(1, len(ids) + 1) if stop in tok.decode(ids[:k]))
    assert stop and 1 < want <= 8 < len(ids) and not free.finished
    torch.manual_seed(0)  # the same draws: the same tokens until the stop string
    (ep,) = HFRolloutEngine(model, **kw, rollout_cfg=RolloutConfig(stop=[stop])).generate([prompt], sampling)
    assert ep.finished and ep.response_ids == ids[:want] and stop in tok.decode(ep.response_ids)
    assert ep.rollout_logp == pytest.approx(free.rollout_logp[:want], abs=1e-5)
    # The prompt's own text never stops a response (HF's stop_strings would: they match across the boundary).
    prompt_end, written = Prompt(input_ids=prompt.input_ids + ids[:6]), tok.decode(ids[:6])
    (late,) = HFRolloutEngine(model, **kw, rollout_cfg=RolloutConfig(stop=[written])).generate(
        [prompt_end], Sampling(n=1, temperature=1.0, max_new_tokens=3))
    assert written not in tok.decode(late.response_ids)
    assert late.finished == (late.response_ids[-1] in kw["eos_ids"])  # finished by EOS alone, if at all


@pytest.mark.parametrize("role", ["user", "raw"])
def test_multi_turn_closes_a_stopped_turn_with_an_untrained_eos(tiny_model_factory, role):
    """Every printable character is a stop string, so each turn stops after its first token; the episode then
    holds that token (trained), EOS (not trained) and the observation, and one forward reproduces the
    recorded log-probs. Raw observations (Search-R1) continue the assistant's text: no EOS between."""
    from rllava.config import ModelConfig
    from rllava.envs import Environment, Observation, StepResult
    from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer
    from rllava.roles.rollout import Rollout

    class Echo(Environment):
        def reset(self, sample_meta, images):
            self.turns, self.seen = 0, []

        def step(self, action_text):
            self.turns += 1
            self.seen.append(action_text)
            if self.turns > 2:
                return StepResult(None, 0.0, True, {"stop": "answer"})
            return StepResult(Observation(text="again"), 0.0, False, {"action": "tool"})

    model, processor = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2_vl"))))
    tok, eos = get_tokenizer(processor), eos_token_ids(model, processor)
    engine = HFRolloutEngine(model, pad_id=pad_token_id(processor), eos_ids=eos, processor=processor,
                             suppress_ids=[processor.image_token_id],
                             rollout_cfg=RolloutConfig(stop=list(string.printable.strip())))
    envs: list[Echo] = []
    renderer = ObservationRenderer(processor, role=role, template="\n<information>{text}</information>\n")
    rollout = MultiTurnRollout(Rollout(engine, tok, RolloutConfig()), lambda: envs.append(Echo()) or envs[-1],
                               renderer, max_total_tokens=256)
    prompt = Prompt(input_ids=tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    torch.manual_seed(0)
    episodes = rollout.generate([prompt], Sampling(n=2, temperature=1.0, max_new_tokens=8, logprobs=True))
    for ep, env in zip(episodes, envs):
        assert ep.info["turns"] == 3
        policy = [i for i, m in enumerate(ep.response_mask) if m]
        assert len(policy) >= 3 and all(ep.response_ids[i] not in eos for i in policy[:2])  # stopped, not EOS
        first = policy[0]
        if role == "raw":  # the observation follows at once, as written
            n = len(tok("\n<information>again</information>\n", add_special_tokens=False)["input_ids"])
            assert tok.decode(ep.response_ids[first + 1:first + 1 + n]) == "\n<information>again</information>\n"
            assert ep.response_mask[first + 1:first + 1 + n] == [0] * n and policy[1] == first + 1 + n
        else:
            assert ep.response_ids[first + 1] == eos[0] and ep.response_mask[first + 1] == 0  # closed, untrained
        assert env.seen[0] == tok.decode(ep.response_ids[:first + 1], skip_special_tokens=True)
    batch = Batch.from_episodes(episodes, pad_token_id(processor))
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    recorded = torch.tensor([ep.rollout_logp + [0.0] * (batch.response_width - len(ep.rollout_logp)) for ep in episodes])
    m = batch.response_mask.bool()
    assert torch.allclose(logp[m], recorded[m], atol=1e-4)


def test_checkpoint_sampling_settings_do_not_reach_the_rollout(text_model):
    """A checkpoint's generation_config.json may carry sampling settings (Qwen2.5-Instruct ships
    repetition_penalty 1.05); the rollout must not apply them, since the trainer's log-probs assume plain
    softmax(logits / T). Greedy makes it visible: every token is the arg-max of the plain logits, even where
    `no_repeat_ngram_size=1` would forbid it. The model's own config is left as it was."""
    model, tok = text_model
    saved = model.generation_config
    model.generation_config = saved.__class__(**{**saved.to_dict(), "no_repeat_ngram_size": 1,
                                                 "repetition_penalty": 50.0, "min_new_tokens": 12})
    try:
        engine = HFRolloutEngine(model, pad_token_id(tok), eos_token_ids(model, tok))
        ids = tok("<|im_start|>user\nab ab ab<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        ep = engine.generate([Prompt(input_ids=ids)], Sampling(n=1, temperature=0.0, max_new_tokens=12))[0]
        assert model.generation_config.no_repeat_ngram_size == 1  # restored after generate
    finally:
        model.generation_config = saved
    full = torch.tensor([ids + ep.response_ids])
    with torch.no_grad():
        plain = model(input_ids=full).logits[0, len(ids) - 1:-1].argmax(-1).tolist()
    assert ep.response_ids == plain[:len(ep.response_ids)]
    assert len(set(ep.response_ids)) < len(ep.response_ids)  # it repeats: no_repeat_ngram_size would have changed it
