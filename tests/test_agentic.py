"""Multi-turn episodes: token layout, images mid-episode, log-prob consistency, and an agentic training run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from rllava.config import load_config
from rllava.data.types import Batch
from rllava.envs import ENVIRONMENTS, Environment, Observation, StepResult
from rllava.models.logprobs import response_logprobs
from rllava.models.tiny_families import FAMILIES


@ENVIRONMENTS.register("image_echo", description="test env: answers each turn with an image, ends after 2 observations")
class ImageEchoEnv(Environment):
    def reset(self, sample_meta, images):
        self.turn = 0
        return None

    def step(self, action_text):
        self.turn += 1
        if self.turn > 2:
            return StepResult(None, 0.0, True, {"stop": "answer", "turn_reward": 0.0})
        colour = (255, 0, 0) if self.turn == 1 else (0, 0, 255)
        return StepResult(Observation(text=f"look {self.turn}", images=[Image.new("RGB", (200, 150), colour)]),
                          0.5, False, {"action": "tool", "turn_reward": 0.5})


# Image-token layouts differ: M-RoPE grids (Qwen), tiles plus a global view (Idefics3/SmolVLM, 200x150 px
# observations give 4 + 1 tiles), fixed soft tokens (Gemma3), a plain projector (LLaVA, TinyLLaVA).
MULTI_TURN_FAMILIES = [f for f, spec in FAMILIES.items() if spec.vision]  # every image family


@pytest.fixture(scope="module", params=MULTI_TURN_FAMILIES)
def setup(request, tiny_model_factory, tmp_path_factory):
    from rllava.data.dataset import RLDataset
    from rllava.models.load import get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.tasks import make_task

    data = make_task("counting", tmp_path_factory.mktemp("d") / "counting", n=10)
    cfg = load_config(None, [f"model.path={tiny_model_factory(request.param)}"])
    model, processor = load_model_and_processor(cfg.model)
    ds = RLDataset(str(data / "train.parquet"), cfg.data, processor)
    return model, processor, [ds[0], ds[1]], pad_token_id(processor), get_tokenizer(processor), data


def make_rollout(model, processor, pad, tok, env_name="image_echo"):
    from rllava.config import RolloutConfig
    from rllava.engines.hf_rollout import HFRolloutEngine
    from rllava.envs import make_environment
    from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer
    from rllava.roles.rollout import Rollout

    # Every token ends a turn, so each policy turn is one token and episodes always reach the env. The
    # embedding may have rows past the tokenizer's ids (padding), and a random model samples them too.
    placeholders = {processor.image_token_id if hasattr(processor, "image_token_id") else -1}
    vocab = max(len(tok), model.get_output_embeddings().weight.shape[0])
    eos = [i for i in range(vocab) if i not in placeholders]
    engine = HFRolloutEngine(model, pad_id=pad, eos_ids=eos, suppress_ids=sorted(placeholders - {-1}))
    env_cfg = load_config(None, [f"env.name={env_name}"]).env
    return MultiTurnRollout(Rollout(engine, tok, RolloutConfig(max_new_tokens=4)),
                            lambda: make_environment(env_cfg) if env_name != "image_echo" else ImageEchoEnv(),
                            ObservationRenderer(processor), max_total_tokens=512)


def test_multiturn_layout_and_logprob_consistency(setup):
    from rllava.engines.hf_rollout import Sampling

    model, processor, prompts, pad, tok, _ = setup
    torch.manual_seed(0)
    episodes = make_rollout(model, processor, pad, tok).generate(prompts, Sampling(n=2, temperature=1.0, max_new_tokens=4,
                                                                                  logprobs=True))
    assert len(episodes) == 4
    for ep in episodes:
        assert ep.info["turns"] == 3 and len(ep.extra_mm) == 2  # two observations, each with an image
        mask = ep.response_mask
        assert mask[0] == 1 and 0 in mask and mask[-1] == 1  # policy | observation | ... | policy
        assert sum(mask) == 3
        if "mm_token_type_ids" in ep.prompt.seq:  # the observation's image tokens are marked for M-RoPE
            assert sum(1 for t in ep.response_seq["mm_token_type_ids"] if t == 1) > 0
        assert ep.turn_rewards == [0.5, 0.5, 0.0]
    batch = Batch.from_episodes(episodes, pad)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses)
    recorded = torch.tensor([ep.rollout_logp + [0.0] * (batch.response_width - len(ep.rollout_logp)) for ep in episodes])
    m = batch.response_mask.bool()
    assert torch.allclose(logp[m], recorded[m], atol=1e-4), (logp[m] - recorded[m]).abs().max()
    # the observation images matter: changing them changes the later turns' log-probs
    episodes[0].extra_mm[1] = {k: (-v if k == "pixel_values" else v) for k, v in episodes[0].extra_mm[1].items()}
    with torch.no_grad():
        logp2, _ = response_logprobs(model, Batch.from_episodes(episodes, pad).model_inputs(), batch.responses)
    last = max(j for j, v in enumerate(episodes[0].response_mask) if v)
    assert not torch.isclose(logp2[0, last], logp[0, last], atol=1e-6)
    assert torch.equal(logp2[1:], logp[1:])  # and only in the episode that saw them


def test_agentic_training_run_with_zoom_tool(tiny_model_factory, tmp_path):
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    data = make_task("zoom", tmp_path / "zoom", n=10, min_size=128, max_size=160)
    cfg = load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}", "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=6",
        "trainer.pipeline=agentic", "env.name=tools", "env.tools=[zoom]", "env.max_turns=2",
        "reward.functions={exact_match: 1.0}", "trainer.total_steps=2", f"trainer.output_dir={tmp_path}",
        "trainer.progress_bar=false", "trainer.loggers=[jsonl]"])
    run_experiment(cfg)
    rows = [json.loads(ln) for ln in (Path(tmp_path) / "default" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all("agent/tool_call_rate" in r and "agent/turns" in r for r in rows[1:])


class BarrierEnv(Environment):
    """Each step waits until `parties` steps are inside at once: it only returns if they run concurrently."""

    def __init__(self, barrier):
        self.barrier = barrier

    def reset(self, sample_meta, images):
        return None

    def step(self, action_text):
        self.barrier.wait()  # the barrier's own timeout
        return StepResult(Observation(text=f"saw {action_text}"), 0.0, False, {"action": "tool"})


def test_environments_step_in_parallel_threads():
    import threading

    from rllava.roles.multiturn import MultiTurnRollout

    barrier = threading.Barrier(4, timeout=20)
    envs = [BarrierEnv(barrier) for _ in range(8)]
    results = MultiTurnRollout(None, None, None, 0, env_workers=4)._step(envs, [f"t{i}" for i in range(8)])
    assert [r.observation.text for r in results] == [f"saw t{i}" for i in range(8)]  # in episode order
    serial = [BarrierEnv(threading.Barrier(1)) for _ in range(2)]
    assert len(MultiTurnRollout(None, None, None, 0, env_workers=1)._step(serial, ["a", "b"])) == 2
    with pytest.raises(threading.BrokenBarrierError):  # one at a time, a 2-party barrier never fills
        MultiTurnRollout(None, None, None, 0, env_workers=1)._step([BarrierEnv(threading.Barrier(2, timeout=0.2))], ["a"])


class WordsEnv(Environment):
    """Answers every turn with `words` words of text (a stand-in for a long tool output); never ends itself."""

    def __init__(self, words):
        self.words = words

    def reset(self, sample_meta, images):
        return None

    def step(self, action_text):
        return StepResult(Observation(text=" ".join(["apple"] * self.words)), 0.0, False,
                          {"action": "tool", "turn_reward": 0.0})


@pytest.fixture(scope="module")
def text_model(tiny_model_factory):
    from rllava.models.load import get_tokenizer, load_model_and_processor, pad_token_id

    cfg = load_config(None, [f"model.path={tiny_model_factory('qwen2')}"])
    model, processor = load_model_and_processor(cfg.model)
    return model, processor, get_tokenizer(processor), pad_token_id(processor)


def test_multiturn_rollout_keeps_no_logits_unless_asked(text_model, monkeypatch):
    """Recording rollout log-probs makes HF generate keep every step's full-vocab fp32 logits ([B, T, V]); a
    multi-turn rollout asked for them on every turn though nothing reads them without algorithm.tis_cap."""
    from rllava.config import RolloutConfig
    from rllava.data.types import Prompt
    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
    from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer
    from rllava.roles.rollout import Rollout

    model, processor, tok, pad = text_model
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k) or generate(*a, **k))
    engine = HFRolloutEngine(model, pad_id=pad, eos_ids=[tok.eos_token_id])
    mt = MultiTurnRollout(Rollout(engine, tok, RolloutConfig(max_new_tokens=4)), lambda: WordsEnv(3),
                          ObservationRenderer(processor), max_total_tokens=64)
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    episodes = mt.generate([Prompt(input_ids=ids, text="hello")], Sampling(n=2, temperature=1.0, max_new_tokens=4))
    assert calls and not any(k.get("output_logits") for k in calls)
    assert all(ep.rollout_logp is None for ep in episodes)  # none recorded: TIS is not fed zeros as log-probs


@pytest.mark.parametrize("words, budget, max_new_tokens, one_token_turns", [
    (60, 32, 4, True),  # the first observation alone is past the budget
    (3, 24, 4, True),  # short observations: several turns, then one that would not fit
    (3, 5, 12, False),  # a single turn longer than the whole budget is cut
])
def test_episode_never_exceeds_max_total_tokens(text_model, words, budget, max_new_tokens, one_token_turns):
    from rllava.config import RolloutConfig
    from rllava.data.types import Prompt
    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
    from rllava.roles.multiturn import MultiTurnRollout, ObservationRenderer
    from rllava.roles.rollout import Rollout

    model, processor, tok, pad = text_model
    vocab = max(len(tok), model.get_output_embeddings().weight.shape[0])
    eos = list(range(vocab)) if one_token_turns else [tok.eos_token_id]
    engine = HFRolloutEngine(model, pad_id=pad, eos_ids=eos, suppress_ids=None if one_token_turns else eos)
    mt = MultiTurnRollout(Rollout(engine, tok, RolloutConfig(max_new_tokens=max_new_tokens)), lambda: WordsEnv(words),
                          ObservationRenderer(processor), max_total_tokens=budget)
    torch.manual_seed(0)
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    episodes = mt.generate([Prompt(input_ids=ids, text="hello")],
                           Sampling(n=2, temperature=1.0, max_new_tokens=max_new_tokens, logprobs=True))
    for ep in episodes:
        assert len(ep.response_ids) <= budget, (len(ep.response_ids), ep.info)
        assert len(ep.response_mask) == len(ep.rollout_logp) == len(ep.response_ids)
        assert ep.info["stop"] == "budget" and not ep.finished
        assert ep.response_mask[-1] == 1  # it ends on a policy turn, never on an observation
    if words == 3 and one_token_turns:
        assert episodes[0].info["turns"] >= 2
    if not one_token_turns:
        assert len(episodes[0].response_ids) == budget and episodes[0].info["turns"] == 1


@pytest.mark.parametrize("family", [*MULTI_TURN_FAMILIES, "qwen2", "qwen3"])
def test_observations_continue_the_chat_template_after_the_turn_end_token(tiny_model_factory, family):
    """What follows an assistant turn's end token in the chat template (Qwen: "<|im_end|>" then a newline; Gemma 3:
    "<end_of_turn>" then a newline, though its eos token is "<eos>") is what the renderer writes before an
    observation; and the token a stopped turn is closed with is that end token."""
    from transformers import AutoProcessor

    from rllava.roles.multiturn import ObservationRenderer

    processor = AutoProcessor.from_pretrained(tiny_model_factory(family))
    tok = getattr(processor, "tokenizer", processor)
    renderer = ObservationRenderer(processor, multimodal=family not in ("qwen2", "qwen3"))
    end_id, _ = renderer.turn_close()
    end = tok.decode([end_id])
    conv = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "call"}]},
            {"role": "user", "content": [{"type": "text", "text": "tool says 3"}]}]
    if family in ("qwen2", "qwen3"):
        conv = [{**m, "content": m["content"][0]["text"]} for m in conv]
    text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text[text.rindex("call"):].startswith("call" + end)  # the template closes the turn with that token
    assert renderer.render("tool says 3", 0) == text[text.rindex("call") + len("call" + end):]


def test_only_the_first_turns_context_carries_the_prompts_chat_text_and_raw_images():
    """The vLLM engine reads an image prompt as chat text plus raw images: right for the first turn, wrong once the
    context holds turns and observations (it would generate from the bare prompt), so later contexts carry none and
    the engine refuses them instead of answering the wrong question."""
    from rllava.data.types import Episode, Prompt
    from rllava.roles.multiturn import MultiTurnRollout

    ep = Episode(Prompt(input_ids=[1, 2], text="<chat>", images=["an image"]), info={"turns": 0})
    first = MultiTurnRollout._context(ep)
    assert (first.input_ids, first.text, first.images) == ([1, 2], "<chat>", ["an image"])
    ep.response_ids, ep.response_mask, ep.info["turns"] = [5, 6], [1, 1], 1
    later = MultiTurnRollout._context(ep)
    assert (later.input_ids, later.text, later.images) == ([1, 2, 5, 6], "", [])


def tool_env_episode(turns: list[str], max_turns: int, gold: str):
    """An episode as the multi-turn rollout closes it (finished, stop, format_ok, turn rewards) after a ToolEnv
    stepped each turn; its response_text is the last turn's, as reward functions read it."""
    from rllava.data.types import Episode, Prompt
    from rllava.envs import ToolEnv

    env = ToolEnv(tools=["zoom"], max_turns=max_turns, tool_reward=0.1)
    env.reset({"answer": gold}, [Image.new("RGB", (64, 64))])
    results = [env.step(t) for t in turns]
    ep = Episode(prompt=Prompt(input_ids=[0], meta={"answer": gold}), response_text=turns[-1], finished=results[-1].done,
                 turn_rewards=[r.info["turn_reward"] for r in results])
    ep.info = {"stop": results[-1].info.get("stop"), "format_ok": env.outcome().format_ok, "turns": len(turns)}
    return ep


ZOOM = '<tool_call>{"name": "zoom", "arguments": {"bbox": [0, 0, 64, 3]}}</tool_call>'  # a count reward reads 3 in it


@pytest.mark.parametrize("turns, stop, answer_reward", [
    ([ZOOM, ZOOM], "max_turns", 0.0),  # the turns ran out on a (skipped) tool call: no answer, though it holds a 3
    ([ZOOM, "<answer>3</answer>"], "answer", 1.0),
    ([ZOOM, "There are \\boxed{3}."], "no_action", 1.0),  # a plain final message ends the episode as its answer
])
def test_only_an_episode_that_ended_with_an_answer_gets_the_answer_reward(turns, stop, answer_reward):
    from rllava.pipelines.agentic import EpisodeRewardScorer
    from rllava.roles.reward import RewardScorer

    cfg = load_config(None, ["reward.functions={count: 1.0}"])
    ep = tool_env_episode(turns, max_turns=2, gold="3")
    assert ep.info["stop"] == stop
    metrics = EpisodeRewardScorer(RewardScorer(cfg.reward), cfg.env.reward_weights).score([ep])
    assert ep.reward_info["answer_reward"] == ep.reward_info["accuracy"] == answer_reward
    assert ep.reward == pytest.approx(answer_reward + 0.1)  # plus the first turn's tool reward
    assert metrics["reward/accuracy"] == answer_reward and metrics["agent/answer_rate"] == float(answer_reward > 0)


@pytest.mark.parametrize("stop", ["length", "budget"])
def test_a_cut_off_last_turn_gets_no_answer_reward(stop):
    """A turn cut by max_new_tokens or the token budget never reached the environment: even a right answer in it
    scores nothing."""
    from rllava.data.types import Episode, Prompt
    from rllava.pipelines.agentic import EpisodeRewardScorer
    from rllava.roles.reward import RewardScorer

    cfg = load_config(None, ["reward.functions={count: 1.0}"])
    ep = Episode(prompt=Prompt(input_ids=[0], meta={"answer": "3"}), response_text="<answer>3</answer> and more",
                 finished=False, turn_rewards=[0.0], info={"stop": stop, "format_ok": False, "turns": 1})
    metrics = EpisodeRewardScorer(RewardScorer(cfg.reward), cfg.env.reward_weights).score([ep])
    assert ep.reward == ep.reward_info["answer_reward"] == ep.reward_info["accuracy"] == metrics["reward/accuracy"] == 0.0
