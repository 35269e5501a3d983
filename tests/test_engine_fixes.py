"""Engine and actor regressions: a checkpoint of a fresh FSDP2 optimizer, uneven rows per rank under
actor.mini_batch_size (both on 2 ranks: torchrun, gloo, CPU), and a local checkpoint of other trained parameters."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import start_torchrun, wait_torchrun
from transformers import AutoModelForCausalLM

from rllava.config import ConfigError
from rllava.engines.local import LocalTrainEngine

WORKER_PATH = Path(__file__).parent / "dist_scripts" / "engine_fixes_worker.py"


def _import_worker():
    spec = importlib.util.spec_from_file_location("engine_fixes_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _import_worker()


@pytest.fixture(scope="module")
def dist_results(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_fixes")
    proc = start_torchrun([str(WORKER_PATH), str(out), str(tiny_model_factory("qwen2"))], out / "torchrun.log")
    wait_torchrun(proc, out / "torchrun.log", timeout=240)  # a rank stuck in a collective fails here (both stopped)
    return torch.load(out / "results.pt", weights_only=False)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def initial(tiny_model_factory) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(tiny_model_factory("qwen2")).state_dict()


def _moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(float((a[k] - b[k]).abs().max()) > 0 for k in a)


def test_fsdp2_checkpoint_before_the_first_step_does_not_change_training(dist_results, initial):
    """Saving (and resuming from) a checkpoint of an optimizer that has not stepped leaves it fresh: the next steps
    equal those of a run that never saved (AdamW with weight decay, where a zero-lr step would shift the bias
    correction)."""
    fresh = dist_results["fresh"]
    assert _moved(fresh["plain"], initial)
    _assert_same(fresh["saved"], fresh["plain"])
    _assert_same(fresh["resumed"], fresh["plain"])
    assert fresh["state_after_save"] == fresh["state_after_load"] == 0


def test_uneven_rows_per_rank_take_the_global_number_of_mini_batches(dist_results, initial, tiny_model_factory):
    """2 rows on rank 0, 6 on rank 1: mini_batch_size=8 is one optimizer step on both ranks, equal to one process's
    update of all 8 rows; mini_batch_size=2 is four on both (rank 0 runs its empty ones at zero weight)."""
    from rllava.roles.actor import Actor

    uneven = dist_results["uneven"]
    assert uneven[8]["steps"] == [1, 1]
    assert uneven[2]["steps"] == [4, 4]
    path = str(tiny_model_factory("qwen2"))
    engine = LocalTrainEngine(AutoModelForCausalLM.from_pretrained(path), **worker.ENGINE_KW)
    steps = worker.count_steps(engine)
    Actor(engine, worker.actor_config(path, 8)).update(worker.make_batch())
    assert steps[0] == 1
    reference = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
    assert _moved(reference, initial)
    _assert_same(uneven[8]["weights"], reference, atol=1e-5)
    assert all(bool(torch.isfinite(v).all()) for v in uneven[2]["weights"].values())


def _engine(path: Path, frozen: tuple[str, ...] = ()) -> LocalTrainEngine:
    model = AutoModelForCausalLM.from_pretrained(path)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen))
    return LocalTrainEngine(model, lr=1e-3)


@pytest.mark.parametrize("saved_frozen, now_frozen", [
    ((), ("model.layers.",)),  # fully trained, now the layers are frozen: the checkpoint has more
    (("model.layers.",), ()),  # the reverse: this model trains parameters the checkpoint lacks
])
def test_local_checkpoint_of_other_trained_parameters_is_refused_by_name(tiny_model_factory, tmp_path, saved_frozen,
                                                                         now_frozen):
    """A clear ConfigError naming the parameters (count and first few) and the checkpoint, not a failure deep in the
    optimizer's load_state_dict."""
    path = tiny_model_factory("qwen2")
    _engine(path, saved_frozen).save(tmp_path / "engine")
    engine = _engine(path, now_frozen)
    layers = sum(n.startswith("model.layers.") for n, _ in engine.model.named_parameters())
    with pytest.raises(ConfigError) as info:
        engine.load(tmp_path / "engine")
    msg = str(info.value)
    assert str(tmp_path / "engine") in msg
    assert (f"trained here but not in it: {layers} " if saved_frozen else f"in it but not trained here: {layers} ") in msg
    assert "'model.layers.0." in msg and "..." in msg  # the first few names
