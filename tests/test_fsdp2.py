"""FSDP2 engine: 2 ranks (torchrun, gloo, CPU) against one process on the same global batch.

One torchrun launch trains a tied-embedding text model (qwen2: the LM head stays with the root)
and a VLM with a separate head unit (qwen2_vl); the single-process reference runs here with
LocalTrainEngine through the very same scenario code (tests/dist_scripts/fsdp2_worker.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_scripts import fsdp2_worker as worker
from dist_scripts.launch import start_torchrun, stop_torchrun, wait_torchrun
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from rllava.config import ConfigError
from rllava.engines import TRAIN_ENGINES
from rllava.engines import distributed as du
from rllava.engines.fsdp2 import FSDP2TrainEngine, repeated_blocks
from rllava.engines.local import LocalTrainEngine

WORKER_PATH = Path(__file__).parent / "dist_scripts" / "fsdp2_worker.py"
FAMILIES = {"qwen2": AutoModelForCausalLM, "qwen2_vl": AutoModelForImageTextToText}
RANK_ROWS = [[0, 1], [2, 3]]  # the global batch rows each rank holds (one prompt group each)



@pytest.fixture(scope="module")
def dist_launch(tiny_model_factory, tmp_path_factory):
    """Start the worker under torchrun for every family (it runs while the reference is computed here)."""
    out = tmp_path_factory.mktemp("fsdp2")
    specs = [f"{f}={tiny_model_factory(f)}" for f in FAMILIES]
    proc = start_torchrun([str(WORKER_PATH), str(out), *specs], out / "torchrun.log")
    yield proc, out
    stop_torchrun(proc)  # a failure elsewhere: stop torchrun and both ranks


@pytest.fixture(scope="module")
def dist_results(dist_launch, reference):
    proc, out = dist_launch
    wait_torchrun(proc, out / "torchrun.log", timeout=300)
    return out, torch.load(out / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference(tiny_model_factory):
    """The same scenario in one process with LocalTrainEngine on the whole batch."""
    refs = {}
    for family in FAMILIES:
        model, processor = worker.load(tiny_model_factory(family))
        engine = LocalTrainEngine(model, **worker.ENGINE_KW)
        batch = worker.make_batch(processor, vision=family != "qwen2")
        prompts = [batch.prompts[0], batch.prompts[2]]
        generated = worker.greedy(model, engine.compute, processor, prompts, engine.device)
        logits = [worker.greedy_logits(model, engine.compute, processor, p, engine.device) for p in prompts]
        batch.old_logp = worker.old_logprobs(engine, batch)
        tokens = float(batch.response_mask.sum())
        metrics = [worker.train_step(engine, batch, [[0, 1, 2, 3]], tokens) for _ in range(worker.STEPS)]
        refs[family] = {"generated": generated, "logits": logits, "old_logp": batch.old_logp, "mask": batch.response_mask,
                        "metrics": metrics, "model": model, "batch": batch, "lr": engine.scheduler.get_last_lr()[0]}
    return refs


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _share_over(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> float:
    """The share of elements that differ by more than `tol`."""
    over = sum(int(((a[k].float() - b[k].float()).abs() > tol).sum()) for k in a)
    return over / sum(a[k].numel() for k in a)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_ranks_match_one_process(dist_results, reference, tiny_model_factory, family):
    _, results = dist_results
    got, ref = results[family], reference[family]
    # No-grad log-probs through the sharded model, each rank on its own rows.
    for rows, logp in zip(RANK_ROWS, got["old_logp"]):
        width = logp.shape[1]
        torch.testing.assert_close(logp * ref["mask"][rows, :width], ref["old_logp"][rows, :width] * ref["mask"][rows, :width],
                                   atol=1e-5, rtol=0)
    # Loss (global token-mean, summed over ranks) and gradient norm at every step; clipping is active at step 1.
    assert got["metrics"][0]["grad_norm"] > worker.ENGINE_KW["max_grad_norm"]
    # The shared-prompt forward ran on the sharded model at step 1, the plain one at steps 0 and 2 (rank 0's
    # single rows cannot share, so no rank did); the reference shared its 2 prompts at every step.
    assert [m["shared"] for m in got["metrics"]] == [0, 1, 0] and all(m["shared"] == 1 for m in ref["metrics"])
    # Rank 0 at step 1: its prompt pass, one response pass and a filler pass (rank 1 split its responses in two).
    assert got["metrics"][1]["base_calls"] == 3
    for g, r in zip(got["metrics"], ref["metrics"]):
        assert abs(g["loss"] - r["loss"]) < 1e-5
        assert abs(g["grad_norm"] - r["grad_norm"]) < 1e-5 * max(1.0, r["grad_norm"])
        assert g["lr"] == pytest.approx(r["lr"])
    # Weights after 3 optimizer steps: the training moved them (Adam: about lr per step), and identically.
    # (lr is small because Adam turns fp32 rounding noise in near-zero gradients into steps of up to lr.)
    ref_weights = {k: v.detach() for k, v in ref["model"].state_dict().items()}
    initial = worker.load(tiny_model_factory(family))[0].state_dict()
    assert _max_diff(ref_weights, initial) > 2 * worker.ENGINE_KW["lr"]
    # Where a gradient is near Adam's eps, fp32 rounding (which differs with the thread count) moves a weight by
    # a fraction of lr: a handful of elements; every other weight agrees to 1e-6.
    assert _max_diff(got["weights"], ref_weights) < 0.25 * worker.ENGINE_KW["lr"]
    assert _share_over(got["weights"], ref_weights, 1e-6) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_on_sharded_model_matches_one_process(dist_results, reference, family):
    got = [ids for rank_out in dist_results[1][family]["generated_before"] for ids in rank_out]
    assert got == reference[family]["generated"]
    assert all(len(ids) > 0 for ids in got)
    for logits, ref in zip(dist_results[1][family]["logits_before"], reference[family]["logits"]):
        assert logits.shape == ref.shape
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_dcp_resume_equals_uninterrupted_run(dist_results, family):
    got = dist_results[1][family]
    assert got["sharded_after"] == {"generation": True, "logprobs": True, "training": True}
    assert got["resumed_metrics"] == got["metrics"][worker.SAVE_AFTER:]
    assert _max_diff(got["resumed_weights"], got["weights"]) == 0.0
    assert got["resumed_lr"] == got["lr"]


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_folder_loads_with_plain_transformers(dist_results, reference, tiny_model_factory, family):
    out, results = dist_results
    folder = out / f"hf-{tiny_model_factory(family).name}"
    model = FAMILIES[family].from_pretrained(folder).eval()
    exported = model.state_dict()
    assert _max_diff({k: exported[k] for k in results[family]["weights"]}, results[family]["weights"]) == 0.0
    ref_model = reference[family]["model"].eval()
    inputs = reference[family]["batch"].model_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref_model(**inputs).logits, atol=1e-4, rtol=0)
    assert (folder / "tokenizer.json").exists()


def test_collective_helpers_on_two_ranks(dist_results):
    seen = dist_results[1]["helpers"]  # as rank 0 saw them; rank r reported x=r and a key of its own
    assert seen["mean"] == {"x": 0.5, "r0": 10.0, "r1": 11.0}
    assert seen["reduced"] == {"t": 3.0, "m": 1.0, "a": 2.5, "r0": 5.0, "r1": 5.0}  # a key only one rank has
    assert seen["pad"] == [(0, True), (0, False)]  # rank 1 had two items, rank 0 one
    assert (seen["sum"], seen["max"], seen["bcast"]) == (3.0, 1.0, "from0")
    assert seen["gathered"] == [[0], [0, 1]]


# ------------------------------------------------------------------ single-process pieces


def test_registered_and_needs_a_process_group(tiny_model_factory):
    assert TRAIN_ENGINES.get("fsdp2") is FSDP2TrainEngine
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("qwen2"))
    with pytest.raises(ConfigError, match="torchrun"):
        FSDP2TrainEngine(model, lr=1e-3)


def test_sharding_plan_is_generic(tiny_model_factory):
    vlm = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("qwen2_vl"))
    names = {id(m): n for n, m in vlm.named_modules()}
    assert [names[id(b)] for b in repeated_blocks(vlm)] == [
        "model.visual.blocks.0", "model.visual.blocks.1", "model.language_model.layers.0", "model.language_model.layers.1"]
    # Only the outermost lists count, and lists of parameter-free modules are skipped.
    net = nn.Module()
    net.layers = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2)])) for _ in range(3)])
    net.acts = nn.ModuleList([nn.ReLU(), nn.ReLU()])
    assert repeated_blocks(net) == list(net.layers)


def test_distributed_helpers_in_one_process():
    assert (du.rank(), du.world_size(), du.is_main()) == (0, 1, True)
    prompts = list("abcdef")
    assert du.shard_prompts(prompts, 1, 3) == ["c", "d"]
    assert du.shard_prompts(prompts, 0, 1) == prompts
    with pytest.raises(ValueError, match="divisible by the number of ranks"):
        du.shard_prompts(prompts, 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        du.shard_prompts(prompts, 2, 2)
    assert du.pad_to_common_length(["x", "y"]) == [("x", True), ("y", True)]
    assert du.all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert du.reduce_metrics({"a": 1.5, "b": 2.0}, {"a": "sum", "b": "max"}) == {"a": 1.5, "b": 2.0}
    assert du.all_reduce_sum(torch.tensor(3.0)) == 3.0
    assert du.gather_objects({"k": 1}) == [{"k": 1}]
    assert du.broadcast_object("ckpt") == "ckpt"
