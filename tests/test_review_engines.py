"""Engine review: FSDP2 under torchrun (gloo, CPU) with bf16 mixed precision, a non-finite gradient on one rank,
images on some ranks only; metric reduction over 3 ranks where one rank lacks a key.

This file is also the torchrun worker: `python tests/test_review_engines.py fsdp2 OUT LM_PATH VLM_PATH` (2 ranks) or
`... metrics OUT` (3 ranks) writes what the ranks saw to OUT/results.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_scripts.launch import on_every_rank, start_torchrun, wait_torchrun

LR = 1e-6  # Adam's first step moves each weight by lr * g / (|g| + eps): 1e-6 wherever |g| >> eps
MIXED_LR = 1e-3


def lm_tokens(rank: int) -> torch.Tensor:
    """Rank r's two rows of a fixed 4-row batch."""
    return torch.randint(300, 900, (4, 9), generator=torch.Generator().manual_seed(0))[2 * rank:2 * rank + 2]


def vlm_batch(path: str, with_image: bool):
    """One chat prompt (with one random 64x64 image or text-only) and a 3-token response, as rllava batches them."""
    from PIL import Image
    from transformers import AutoProcessor

    from rllava.data.types import Batch, Episode, Prompt
    from rllava.models.introspect import pad_token_id

    processor = AutoProcessor.from_pretrained(path)
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "How many circles?"}]
    chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    images = [Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))]
    enc = processor(text=[chat], images=[images] if with_image else None, return_tensors="pt")
    seq_keys = ("mm_token_type_ids", "token_type_ids")
    seq = {k: enc[k][0].tolist() for k in seq_keys if k in enc}
    mm = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *seq_keys)}
    prompt = Prompt(input_ids=enc["input_ids"][0].tolist(), mm=mm, seq=seq, text=chat)
    return Batch.from_episodes([Episode(prompt=prompt, response_ids=[400, 500, 600], response_mask=[1] * 3)],
                               pad_token_id(processor))


# ---- torchrun side


def _logprob_step(engine, batch) -> dict[str, float]:
    from rllava.models.logprobs import response_logprobs

    with engine.compute(train=True):
        logp, _ = response_logprobs(engine.model, batch.model_inputs(engine.device), batch.responses, chunk_size=2)
        logp.sum().backward()
    return engine.step()


def _fsdp2(out: Path, lm_path: str, vlm_path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    from rllava.config import ConfigError
    from rllava.engines import distributed as du
    from rllava.engines.fsdp2 import FSDP2TrainEngine, blank_image_inputs
    from rllava.models.logprobs import response_logprobs

    rank = du.rank()
    res: dict = {}
    engine = FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(lm_path), lr=LR, compute_dtype="bfloat16",
                              max_grad_norm=0.0)
    ids = lm_tokens(rank)
    with engine.compute(train=True):
        (engine.model(input_ids=ids, labels=ids).loss / 2).backward()  # the ranks' halves sum to the global mean
    res["bf16_step"] = engine.step()
    res["bf16_weights"] = {k: v.detach().clone() for k, v in engine.iter_full_state()}
    with engine.compute(train=True):  # a NaN loss on rank 1 only
        (engine.model(input_ids=ids, labels=ids).loss * (float("nan") if rank == 1 else 1.0)).backward()
    res["nan_step"] = engine.step()
    res["after_nan"] = {k: v.detach().clone() for k, v in engine.iter_full_state()}
    res["skipped_steps"] = engine.skipped_steps

    vlm = FSDP2TrainEngine(AutoModelForImageTextToText.from_pretrained(vlm_path), lr=1e-3)
    try:  # rank 0's micro-batch is text-only, rank 1's has an image; no media_probe to stand in for the image
        _logprob_step(vlm, vlm_batch(vlm_path, with_image=rank == 1))
        res["mixed"] = "trained"
    except ConfigError as e:
        res["mixed"] = str(e)
        vlm.zero_grad()
    res["both_images"] = _logprob_step(vlm, vlm_batch(vlm_path, with_image=True))  # the engine still trains

    # With the probe (as `rllava train` builds it), rank 0 runs the tower on a blank image in its row's place.
    probe = blank_image_inputs(AutoProcessor.from_pretrained(vlm_path))
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        vlm = FSDP2TrainEngine(AutoModelForImageTextToText.from_pretrained(vlm_path), lr=MIXED_LR, max_grad_norm=0.0,
                               compute_dtype=dtype, media_probe=probe)
        batch = vlm_batch(vlm_path, with_image=rank == 1)
        with vlm.compute(train=False):  # a no-grad pass (old log-probs) too
            res[f"mixed_{name}_logp"] = response_logprobs(vlm.model, batch.model_inputs(vlm.device), batch.responses)[0]
        res[f"mixed_{name}_step"] = _logprob_step(vlm, batch)
        res[f"mixed_{name}_weights"] = {k: v.detach().clone() for k, v in vlm.iter_full_state()}
    gathered = du.gather_objects(res)
    if du.is_main():
        torch.save(gathered, out / "results.pt")


def _metrics(out: Path) -> None:
    from rllava.engines import distributed as du

    rank = du.rank()
    # As actor.update builds them: a rank that trained no token (all its responses masked) adds no loss metrics.
    sums = {"actor/loss": 1.0} if rank == 0 else {"actor/loss": 1.0, "actor/pg_clipfrac": 0.25}
    gathered = du.gather_objects(du.reduce_metrics(sums, {k: "sum" for k in sums}))
    if du.is_main():
        torch.save(gathered, out / "results.pt")


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    on_every_rank(lambda: _fsdp2(out, *sys.argv[3:5]) if mode == "fsdp2" else _metrics(out))


# ---- tests


def _launch(out: Path, args: list[str], nproc: int, timeout: float) -> list[dict]:
    proc = start_torchrun([__file__, *args], out / "torchrun.log", nproc=nproc)
    wait_torchrun(proc, out / "torchrun.log", timeout=timeout)
    return torch.load(out / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def fsdp2_ranks(tiny_model_factory, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("review_fsdp2")
    return _launch(out, ["fsdp2", str(out), str(tiny_model_factory("qwen2")), str(tiny_model_factory("qwen2_vl"))],
                   nproc=2, timeout=150)


def test_fsdp2_bf16_compute_keeps_lr_1e6_updates_and_matches_one_process(fsdp2_ranks, tiny_model_factory):
    """Mixed precision (bf16 compute, fp32 master shards): every weight moves by Adam's first step, lr, rather than
    being rounded away, as in one process under bf16 autocast; the two differ only where a tiny gradient's sign
    flips in bf16."""
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    path = tiny_model_factory("qwen2")
    initial = AutoModelForCausalLM.from_pretrained(path).state_dict()
    model = AutoModelForCausalLM.from_pretrained(path)
    local = LocalTrainEngine(model, lr=LR, compute_dtype="bfloat16", max_grad_norm=0.0)
    with local.compute(train=True):
        sum(model(input_ids=lm_tokens(r), labels=lm_tokens(r)).loss / 2 for r in range(2)).backward()
    one = local.step()
    two = fsdp2_ranks[0]["bf16_step"]
    assert two == fsdp2_ranks[1]["bf16_step"]
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-2) and two["skipped"] == 0.0
    moved = torch.cat([(w - initial[k]).flatten() for k, w in fsdp2_ranks[0]["bf16_weights"].items()])
    expected = torch.cat([(w - initial[k]).flatten() for k, w in model.state_dict().items()])
    assert float((moved.abs() - LR).abs().lt(0.05 * LR).float().mean()) > 0.95  # |step| = lr
    assert float(((moved - expected).abs() < 0.1 * LR).float().mean()) > 0.99


def test_fsdp2_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert rank["nan_step"]["skipped"] == 1.0 and np.isnan(rank["nan_step"]["grad_norm"])
        assert rank["skipped_steps"] == 1
    before, after = fsdp2_ranks[0]["bf16_weights"], fsdp2_ranks[0]["after_nan"]
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def test_fsdp2_without_a_media_probe_refuses_images_on_some_ranks_only(fsdp2_ranks):
    """A text-only micro-batch beside an image one never runs the vision blocks, each an FSDP unit that all-gathers:
    the ranks' collectives would differ (gloo aborted with a size mismatch; NCCL hangs). An engine given no blank
    image to run in the text-only rank's place stops every rank with one clear error, and trains on afterwards when
    every rank has images."""
    for rank, seen in zip((0, 1), fsdp2_ranks):
        assert "pixel_values" in seen["mixed"] and "1 of 2 ranks" in seen["mixed"], seen["mixed"]
        assert f"this rank {rank}: {'no' if rank == 0 else 'yes'}" in seen["mixed"] and "media_probe" in seen["mixed"]
        assert seen["both_images"]["skipped"] == 0.0 and seen["both_images"]["grad_norm"] > 0


def _one_process_mixed(vlm_path: str, dtype: str):
    """Log-probs of both rows, and the weights after one step on their summed log-probs, in one process."""
    from transformers import AutoModelForImageTextToText

    from rllava.engines.local import LocalTrainEngine
    from rllava.models.logprobs import response_logprobs

    model = AutoModelForImageTextToText.from_pretrained(vlm_path)
    local = LocalTrainEngine(model, lr=MIXED_LR, max_grad_norm=0.0, compute_dtype=dtype)
    logps = []
    with local.compute(train=True):
        for with_image in (False, True):  # rank 0's row, then rank 1's
            batch = vlm_batch(vlm_path, with_image)
            logp, _ = response_logprobs(model, batch.model_inputs(local.device), batch.responses, chunk_size=2)
            logp.sum().backward()
            logps.append(logp.detach())
    return logps, local.step(), model.state_dict()


@pytest.mark.parametrize("name,dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_fsdp2_trains_a_text_only_rank_beside_an_image_rank_as_one_process(fsdp2_ranks, tiny_model_factory, name,
                                                                           dtype):
    """A mixed dataset under fsdp2: the text-only rank runs the vision tower on a blank image and adds 0 x its
    features, so the ranks issue the same collectives. The log-probs, the gradient norm and the weights after one
    step equal one process's on the same two rows; the vision tower trains from rank 1's image alone."""
    vlm_path = str(tiny_model_factory("qwen2_vl"))
    logps, one, weights = _one_process_mixed(vlm_path, dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    for rank, seen in enumerate(fsdp2_ranks):
        torch.testing.assert_close(seen[f"mixed_{name}_logp"], logps[rank], **tol)
        assert seen[f"mixed_{name}_step"]["skipped"] == 0.0
        assert seen[f"mixed_{name}_step"]["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3 if name == "fp32"
                                                                         else 2e-2)
    from transformers import AutoModelForImageTextToText

    moved = fsdp2_ranks[0][f"mixed_{name}_weights"]
    initial = AutoModelForImageTextToText.from_pretrained(vlm_path).state_dict()
    vision = [k for k in moved if "visual." in k]
    assert vision and all(not torch.equal(moved[k], initial[k]) for k in vision)  # rank 1's image trained the tower
    # Adam's first step is lr x g / (|g| + eps): lr x sign(g) wherever |g| >> eps, the same in both runs; where
    # |g| is near eps (a handful of the 1.3 M weights in fp32) rounding differences in g show, still well under lr.
    diff = torch.cat([(moved[k] - weights[k]).abs().flatten() for k in moved])
    if name == "fp32":
        assert float((diff < 0.01 * MIXED_LR).float().mean()) > 1 - 1e-5 and float(diff.max()) < 0.1 * MIXED_LR
    else:
        assert float((diff < 0.1 * MIXED_LR).float().mean()) > 0.99


def test_reduce_metrics_where_a_rank_lacks_a_key_on_three_ranks(tmp_path):
    """actor.update reduces its sums with how={k: "sum" for k in sums}, built from its own keys: a rank without a key
    (no trained token there) averaged it over the ranks reporting it instead of summing: 0.25 for 0.25 + 0.25."""
    for seen in _launch(tmp_path, ["metrics", str(tmp_path)], nproc=3, timeout=90):
        assert seen == {"actor/loss": 3.0, "actor/pg_clipfrac": 0.5}


if __name__ == "__main__":
    main()
