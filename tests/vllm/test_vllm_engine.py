"""The vLLM rollout engine against the HF engine and the trainer's own log-probs, on one tiny Qwen2 (CPU vLLM).

Runs only where vLLM is installed (scripts/ci_vllm.sh builds that venv); skipped elsewhere.
One engine serves the whole module: building it is the slow part.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

# Under pytest "import vllm" can also find this folder (a namespace package): ask for a real module.
pytest.importorskip("vllm.entrypoints")

from rllava.config import ModelConfig, RolloutConfig  # noqa: E402
from rllava.data.types import Batch, Episode, Prompt  # noqa: E402
from rllava.engines.hf_rollout import HFRolloutEngine, Sampling  # noqa: E402
from rllava.engines.vllm_rollout import VLLMRolloutEngine  # noqa: E402
from rllava.models.load import eos_token_ids, load_model_and_processor, pad_token_id  # noqa: E402
from rllava.models.logprobs import response_logprobs  # noqa: E402

LOGP_TOL = 1e-3
QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Count to five, slowly, and then say done."]


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory("qwen2")  # language head_dim 32: a size vLLM's CPU attention supports
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm_cache"))
    model, tok = load_model_and_processor(ModelConfig(path=str(path)))
    model.eval()
    pad, eos = pad_token_id(tok), eos_token_ids(model, tok)
    engine = VLLMRolloutEngine(model, pad_id=pad, eos_ids=eos, model_path=str(path), dtype="float32",
                               enforce_eager=True, max_model_len=256, seed=0)
    prompts = []
    for i, q in enumerate(QUESTIONS):
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        prompts.append(Prompt(input_ids=tok(text, add_special_tokens=False)["input_ids"], text=text, index=i))
    return dict(engine=engine, model=model, tok=tok, pad=pad, eos=eos, prompts=prompts)


def hf_engine(s, model=None, **kw) -> HFRolloutEngine:
    return HFRolloutEngine(model if model is not None else s["model"], pad_id=s["pad"], eos_ids=kw.pop("eos", s["eos"]), **kw)


def trainer_logps(model, episodes: list[Episode], pad: int, temperature: float = 1.0) -> list[list[float]]:
    """Log-probs of each episode's response tokens as the trainer computes them (left-padded batch)."""
    batch = Batch.from_episodes(episodes, pad)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch.model_inputs(), batch.responses, temperature=temperature)
    return [logp[i, : len(e.response_ids)].tolist() for i, e in enumerate(episodes)]


def assert_logps_close(episodes: list[Episode], expected: list[list[float]]) -> None:
    for e, ref in zip(episodes, expected):
        assert e.rollout_logp is not None and len(e.rollout_logp) == len(ref) == len(e.response_ids)
        worst = max(abs(a - b) for a, b in zip(e.rollout_logp, ref))
        assert worst < LOGP_TOL, f"prompt {e.prompt.index}: log-probs differ by {worst:.2e}"


def greedy_ids(engine, prompts, max_new_tokens=16) -> list[list[int]]:
    return [e.response_ids for e in engine.generate(prompts, Sampling(temperature=0.0, max_new_tokens=max_new_tokens))]


def test_greedy_matches_hf_engine_and_trainer_logprobs(setup):
    s = setup
    s["engine"].sync_weights(s["model"])
    sampling = Sampling(n=2, temperature=0.0, max_new_tokens=16)
    ours = s["engine"].generate(s["prompts"], sampling, group_offset=5)
    ref = hf_engine(s).generate(s["prompts"], sampling, group_offset=5)
    assert [e.group_id for e in ours] == [5, 5, 6, 6, 7, 7]
    assert [e.prompt.index for e in ours] == [0, 0, 1, 1, 2, 2]
    assert [e.response_ids for e in ours] == [e.response_ids for e in ref]
    assert [e.finished for e in ours] == [e.finished for e in ref]
    assert all(e.response_mask == [1] * len(e.response_ids) for e in ours)
    assert ours[0].response_ids == ours[1].response_ids  # greedy: a group's copies agree
    assert_logps_close(ours, trainer_logps(s["model"], ours, s["pad"]))


def test_stops_at_eos_like_hf(setup):
    s = setup
    s["engine"].sync_weights(s["model"])
    free = greedy_ids(s["engine"], s["prompts"][:1])[0]
    stop = free[3]  # declare the 4th greedy token an end-of-sequence token
    cut = free.index(stop) + 1
    engine = s["engine"]
    engine.eos_ids = [stop, *s["eos"]]
    try:
        ours = engine.generate(s["prompts"][:1], Sampling(temperature=0.0, max_new_tokens=16))[0]
    finally:
        engine.eos_ids = list(s["eos"])
    ref = hf_engine(s, eos=[stop, *s["eos"]]).generate(s["prompts"][:1], Sampling(temperature=0.0, max_new_tokens=16))[0]
    assert ours.response_ids == free[:cut] == ref.response_ids
    assert ours.finished and ref.finished
    assert len(ours.rollout_logp) == cut
    unfinished = engine.generate(s["prompts"][:1], Sampling(temperature=0.0, max_new_tokens=2))[0]
    assert unfinished.response_ids == free[:2] and not unfinished.finished  # cut by the length limit


def test_suppressed_tokens_never_sampled(setup):
    s = setup
    s["engine"].sync_weights(s["model"])
    free = greedy_ids(s["engine"], s["prompts"])
    banned = sorted({ids[0] for ids in free})  # each prompt's first greedy token
    engine = s["engine"]
    engine.suppress_ids = banned
    try:
        ours = greedy_ids(engine, s["prompts"])
    finally:
        engine.suppress_ids = []
    ref = [e.response_ids for e in hf_engine(s, suppress_ids=banned).generate(
        s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))]
    assert ours == ref
    assert not any(t in banned for ids in ours for t in ids)
    assert [ids[0] for ids in ours] != [ids[0] for ids in free]


def test_sampled_logprobs_match_trainer_at_temperature(setup):
    s = setup
    s["engine"].sync_weights(s["model"])
    temperature = 0.7
    sampling = Sampling(n=4, temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=12)
    ours = s["engine"].generate(s["prompts"], sampling)
    assert [e.group_id for e in ours] == [g for g in range(3) for _ in range(4)]
    assert len({tuple(e.response_ids) for e in ours[:4]}) > 1  # really sampled
    assert_logps_close(ours, trainer_logps(s["model"], ours, s["pad"], temperature))
    # top_k=1 leaves one candidate: sampling must give the greedy answer.
    top1 = s["engine"].generate(s["prompts"], Sampling(temperature=1.0, top_k=1, max_new_tokens=12))
    assert [e.response_ids for e in top1] == greedy_ids(s["engine"], s["prompts"], 12)


def test_lora_model_synced_merged(setup, tiny_model_factory):
    s = setup
    peft_model, _ = load_model_and_processor(ModelConfig(path=str(tiny_model_factory("qwen2")), lora_rank=4))
    peft_model.eval()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    s["engine"].sync_weights(s["model"])
    base = greedy_ids(s["engine"], s["prompts"])
    try:
        s["engine"].sync_weights(peft_model)
        ours = s["engine"].generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))
        ref = hf_engine(s, model=peft_model).generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))
        assert [e.response_ids for e in ours] == [e.response_ids for e in ref]
        assert [e.response_ids for e in ours] != base
        assert_logps_close(ours, trainer_logps(peft_model, ours, s["pad"]))
    finally:
        s["engine"].sync_weights(s["model"])


@pytest.mark.parametrize("part", ["embed_tokens", "norm", "bias", "self_attn", "mlp"])
def test_every_kind_of_weight_reaches_vllm(setup, part):
    """Perturb one kind of parameter (the embedding is tied to the LM head) and compare with HF after a sync."""
    s = setup
    model = copy.deepcopy(s["model"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        touched = [p for n, p in model.named_parameters() if part in n]
        for p in touched:
            p.add_(torch.randn(p.shape, generator=gen) * p.float().std().clamp(min=0.1))
    assert touched
    try:
        s["engine"].sync_weights(model)
        ours = s["engine"].generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=12))
    finally:
        s["engine"].sync_weights(s["model"])
    ref = hf_engine(s, model=model).generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=12))
    assert [e.response_ids for e in ours] == [e.response_ids for e in ref]
    assert_logps_close(ours, trainer_logps(model, ours, s["pad"]))


def sft_until_greedy(model, prompt: Prompt, target: list[int], max_steps: int = 200) -> int:
    """AdamW with a large lr on the target continuation until greedy decoding reproduces it; returns the steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([prompt.input_ids + target])
    labels = ids.clone()
    labels[:, : len(prompt.input_ids)] = -100
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt.input_ids]), max_new_tokens=len(target), do_sample=False,
                                 pad_token_id=0)
        if out[0, len(prompt.input_ids):].tolist() == target:
            return step
    raise AssertionError(f"SFT did not reach the target in {max_steps} steps")


def test_training_then_rollout_uses_new_weights(setup):
    s = setup
    engine, tok = s["engine"], s["tok"]
    trained = copy.deepcopy(s["model"])
    prompt = s["prompts"][0]
    target = tok("The answer is 5.", add_special_tokens=False)["input_ids"] + [s["eos"][0]]
    engine.model = trained  # what the trainer hands the engine: its live module
    try:
        engine.wake()
        before = greedy_ids(engine, [prompt])[0]
        assert before != target
        sft_until_greedy(trained, prompt, target)  # AdamW writes in place: the version counters move
        ours = engine.generate([prompt], Sampling(temperature=0.0, max_new_tokens=16))[0]  # so an awake engine re-syncs
        ref = hf_engine(s, model=trained).generate([prompt], Sampling(temperature=0.0, max_new_tokens=16))[0]
        expected_logps = trainer_logps(trained, [ours], s["pad"])
        with torch.no_grad():  # back to the old weights through .data, which no counter sees ...
            for p, old in zip(trained.parameters(), s["model"].parameters()):
                p.data.copy_(old.data)
        unseen = greedy_ids(engine, [prompt])[0]
        engine.sleep()  # (no sleep mode on CPU: only marks the engine asleep)
        engine.wake()  # ... but wake always copies the current weights in
        rewound = greedy_ids(engine, [prompt])[0]
    finally:
        engine.model = s["model"]
        engine.sync_weights(s["model"])
    assert ours.response_ids == ref.response_ids == target
    assert ours.finished
    assert_logps_close([ours], expected_logps)
    assert unseen == target
    assert rewound == before


def test_stop_strings_end_responses_as_the_hf_engine_does(setup):
    """rollout.stop: vLLM stops on the same token as the HF engine, keeps the string, and counts it finished."""
    s = setup
    s["engine"].sync_weights(s["model"])
    free = hf_engine(s, processor=s["tok"]).generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))
    ids = next(e.response_ids for e in free if len(e.response_ids) >= 8)
    stop = s["tok"].decode(ids[:6])[len(s["tok"].decode(ids[:4])):]  # what tokens 5 and 6 write
    engine = s["engine"]
    engine.stop, engine.tokenizer = [stop], s["tok"]
    try:
        ours = engine.generate(s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))
    finally:
        engine.stop = []
    ref = hf_engine(s, processor=s["tok"], rollout_cfg=RolloutConfig(stop=[stop])).generate(
        s["prompts"], Sampling(temperature=0.0, max_new_tokens=16))
    assert [e.response_ids for e in ours] == [e.response_ids for e in ref]
    assert [e.finished for e in ours] == [e.finished for e in ref]
    assert any(stop in s["tok"].decode(e.response_ids) and e.finished for e in ours)
