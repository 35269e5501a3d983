"""The shared-prompt forward (each distinct prompt once, its samples on its KV cache) equals the plain forward."""
from __future__ import annotations

import pytest
import torch

from rllava.data.types import Batch, Episode
from rllava.models.load import enable_checkpointing, pad_token_id
from rllava.models.logprobs import response_logprobs
from rllava.models.shared_prompt import response_passes
from rllava.models.tiny_families import FAMILIES
from rllava.roles.actor import forward_inputs
from tests.test_models import family_prompt, load_plain

# Two groups with different prompt lengths (left padding) and responses of different lengths (right padding).
GROUP_RESPONSES = [[[400, 17, 250, 901, 33], [512, 88, 7], [9, 9, 9, 9, 9, 9]],
                   [[77, 5], [300, 301, 302, 303]]]


def grouped_batch(processor, family: str) -> Batch:
    prompts = [family_prompt(processor, family, seed=11),
               family_prompt(processor, family, seed=12, size=(128, 48), text="Count the red circles in the image.")]
    eps = [Episode(prompt=p, response_ids=r, response_mask=[1] * len(r), group_id=g)
           for g, (p, rs) in enumerate(zip(prompts, GROUP_RESPONSES)) for r in rs]
    return Batch.from_episodes(eps, pad_token_id(processor))


def logprobs_and_grads(model, batch: Batch, shared: bool, pass_tokens: int = 256):
    model.zero_grad()
    inputs, share = forward_inputs(model, batch, None, share_prompts=shared, sync_ranks=False, pass_tokens=pass_tokens)
    logp, ent = response_logprobs(model, inputs, batch.responses, temperature=0.9, chunk_size=4,
                                  with_entropy=True, share=share)
    (logp * batch.response_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach() * batch.response_mask, ent.detach() * batch.response_mask, grads


@pytest.mark.parametrize("lengths, overhead, expected", [
    ([5, 3, 6, 2, 4], 64, [[3, 1, 4, 0, 2]]),  # similar lengths: one pass
    ([5, 3, 6, 2, 4], 0, [[3], [1], [4], [0], [2]]),  # no cost a pass: none padded
    ([300, 20, 310, 25, 18, 295], 64, [[4, 1, 3], [5, 0, 2]]),  # 3 x 25 + 3 x 310 + 2 passes, not 6 x 310 + 1
    ([7], 64, [[0]]), ([], 64, []),
])
def test_response_passes_split_rows_where_padding_costs_more_than_a_pass(lengths, overhead, expected):
    assert response_passes(lengths, overhead) == expected


@pytest.mark.parametrize("passes", ["one", "several"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shared_prompt_forward_equals_plain_forward(tiny_model_factory, family, checkpointing, passes):
    """Also under gradient checkpointing, whose backward re-runs every layer's forward on the caches, and with
    the responses split into passes by length (here each length its own pass)."""
    model, processor = load_plain(tiny_model_factory(family))
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    for m in model.modules():  # dropout off, training-mode code paths on
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = grouped_batch(processor, family)
    share = batch.prompt_share()
    assert share is not None and share.rows.tolist() == [0, 3] and share.of_row.tolist() == [0, 0, 0, 1, 1]
    lp_plain, ent_plain, g_plain = logprobs_and_grads(model, batch, shared=False)
    rows_seen = []  # batch sizes the base model was called with
    hook = model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    lp_shared, ent_shared, g_shared = logprobs_and_grads(model, batch, shared=True,
                                                         pass_tokens=256 if passes == "one" else 0)
    hook.remove()
    # The 2 distinct prompts once, then the 5 responses on their cache: in one pass, or one per length (the rows
    # run 4, 2, 5, 1 and 3 tokens).
    assert rows_seen == ([2, 5] if passes == "one" else [2, 1, 1, 1, 1, 1])
    torch.testing.assert_close(lp_shared, lp_plain, atol=2e-5, rtol=0)
    torch.testing.assert_close(ent_shared, ent_plain, atol=2e-5, rtol=0)
    assert g_shared.keys() == g_plain.keys() and len(g_plain) > 0
    for name, g in g_plain.items():  # only the summation order differs
        torch.testing.assert_close(g_shared[name], g, atol=2e-5, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


def test_no_share_when_every_prompt_is_distinct_or_responses_hold_images(tiny_model_factory):
    model, processor = load_plain(tiny_model_factory("qwen2_vl"))
    batch = grouped_batch(processor, "qwen2_vl")
    assert batch.select([0, 3]).prompt_share() is None  # one row per prompt: nothing to share
    one_token = Batch.from_episodes([Episode(prompt=batch.prompts[0], response_ids=[5], response_mask=[1])] * 2, 0)
    assert one_token.prompt_share() is not None
    assert forward_inputs(model, one_token, None, share_prompts=True, sync_ranks=False)[1] is None  # nothing after
    batch.episodes[1].extra_mm = [dict(batch.prompts[0].mm)]  # an observation image inside a response
    assert batch.prompt_share() is None


def test_gradient_checkpointing_falls_back_where_layers_cannot_keep_a_cache(tiny_model_factory, monkeypatch):
    """Older transformers turn the KV cache off in checkpointed layers: there the plain forward is taken."""
    from rllava.models import shared_prompt

    model, processor = load_plain(tiny_model_factory("qwen2_vl"))
    enable_checkpointing(model)
    model.train()
    monkeypatch.setattr(shared_prompt, "checkpointed_layers_keep_cache", lambda: False)
    batch = grouped_batch(processor, "qwen2_vl")
    rows_seen = []
    hook = model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    lp_shared, _, _ = logprobs_and_grads(model, batch, shared=True)
    hook.remove()
    assert rows_seen == [5]  # one plain forward over every row, with every row's images
    lp_plain, _, _ = logprobs_and_grads(model, batch, shared=False)
    torch.testing.assert_close(lp_shared, lp_plain, atol=1e-5, rtol=0)


def test_training_step_is_the_same_with_and_without_sharing(tiny_model_factory, tmp_path):
    """One PPO step with GAE (critic), a KL reference and two epochs (old log-probs): every role's
    numbers and the updated weights agree between actor.share_prompt=true and false."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from rllava.config import load_config
    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    data = make_task("counting", tmp_path / "data", n=12, seed=0)
    runs = {}
    for share in (True, False):
        over = [f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={data / 'train.parquet'}",
                "data.val_files=", "data.template={{ prompt }} Answer with a number.", "data.batch_size=2",
                "rollout.n=4", "rollout.max_new_tokens=6", "actor.lr=1e-3", "actor.ppo_epochs=2",
                "actor.mini_batch_size=4", "algorithm.adv_estimator=gae", "algorithm.kl_coef=0.05",
                "reward.functions={count: 1.0}", f"actor.share_prompt={str(share).lower()}",
                f"trainer.output_dir={tmp_path}", f"trainer.experiment_name=share_{share}", "trainer.progress_bar=false",
                "trainer.loggers=[jsonl]", "trainer.total_steps=1"]
        result = run_experiment(load_config(None, over))
        rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        runs[share] = rows[-1], load_file(str(Path(result["final_model"]) / "model.safetensors"))
    (shared, w_shared), (plain, w_plain) = runs[True], runs[False]
    assert shared["response/length_mean"] == plain["response/length_mean"]  # the same rollouts
    for key in ("actor/loss", "actor/grad_norm", "actor/kl_loss", "actor/entropy", "critic/value_loss"):
        assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert max(float((w_shared[k] - w_plain[k]).abs().max()) for k in w_plain) < 1e-5
