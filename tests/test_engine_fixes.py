"""Engine and actor regressions: a checkpoint of a fresh FSDP2 optimizer, uneven rows per rank under
actor.mini_batch_size (both on 2 ranks: torchrun, gloo, CPU), and a local checkpoint of other trained parameters."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_scripts import engine_fixes_worker as worker
from dist_scripts.launch import start_torchrun, wait_torchrun
from transformers import AutoModelForCausalLM

from rllava.config import ConfigError
from rllava.engines.local import LocalTrainEngine

WORKER_PATH = Path(__file__).parent / "dist_scripts" / "engine_fixes_worker.py"



@pytest.fixture(scope="module")
def dist_results(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_fixes")
    proc = start_torchrun([str(WORKER_PATH), str(out), str(tiny_model_factory("qwen2")), str(tiny_model_factory("qwen2_vl"))],
                          out / "torchrun.log")
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


def test_critic_drops_an_untied_lm_head_and_keeps_a_tied_one(tiny_model_factory):
    """A value model never calls the LM head: the critic builds without an untied one (its parameters are not
    trained, mastered or checkpointed); a tied head is the input embedding and stays."""
    from transformers import AutoModelForImageTextToText

    from rllava.roles.critic import drop_lm_head

    vlm = AutoModelForImageTextToText.from_pretrained(tiny_model_factory("qwen2_vl"))
    head = vlm.get_output_embeddings().weight.numel()
    assert drop_lm_head(vlm) == head > 0
    assert not any("lm_head" in n for n, _ in vlm.named_parameters())
    with pytest.raises(RuntimeError, match="no LM head"):
        vlm.lm_head(torch.zeros(1, 4))
    text = AutoModelForCausalLM.from_pretrained(tiny_model_factory("qwen2"))
    before = sum(p.numel() for p in text.parameters())
    assert drop_lm_head(text) == 0
    assert sum(p.numel() for p in text.parameters()) == before


def test_critic_checkpoint_written_with_the_lm_head_resumes_exactly(dist_results, tiny_model_factory, tmp_path):
    """Critic checkpoints written before the critic dropped its LM head (which never had a gradient, so no
    optimizer state) resume into a critic without it: the next step equals the run that kept the head, with the
    local engine (its optimizer's parameter numbering is renumbered) and with FSDP2 on 2 ranks."""
    local = worker.critic_head(lambda m: LocalTrainEngine(m, **worker.ENGINE_KW), str(tiny_model_factory("qwen2_vl")),
                               tmp_path / "critic")
    for res in (local, dist_results["critic_head"]):
        assert res["freed"] > 0
        assert set(res["old"]) == set(res["new"]) and "value_head.weight" in res["new"]
        _assert_same(res["new"], res["old"])
    assert float(local["new"]["value_head.weight"].abs().max()) > 0  # the steps trained something


def test_critic_checkpoint_whose_lm_head_was_stepped_is_refused(tiny_model_factory, tmp_path):
    """Only a parameter the optimizer never stepped can be left behind: one with optimizer state is refused."""
    from transformers import AutoModelForImageTextToText

    from rllava.roles.critic import ValueModel, drop_lm_head, hidden_size_of

    path = tiny_model_factory("qwen2_vl")

    def engine(drop: bool) -> LocalTrainEngine:
        backbone = AutoModelForImageTextToText.from_pretrained(path)
        if drop:
            drop_lm_head(backbone)
        return LocalTrainEngine(ValueModel(backbone, hidden_size_of(backbone)), **worker.ENGINE_KW)

    old = engine(False)
    worker.value_steps(old, 1, touch_head=True)
    old.save(tmp_path / "critic")
    with pytest.raises(ConfigError, match=r"in it but not trained here: 1 \['backbone.lm_head.weight'\]"):
        engine(True).load(tmp_path / "critic")


def test_a_mini_batch_without_response_tokens_updates_nothing_instead_of_crashing(tiny_model_factory):
    """Every response empty (width 0): the log-probs were zeros outside the graph and backward raised "element 0 of
    tensors does not require grad". Now the forward still runs (as other ranks' would) and the step is a no-op."""
    from rllava.data.types import Batch, Episode, Prompt
    from rllava.models.logprobs import response_logprobs
    from rllava.roles.actor import Actor

    path = str(tiny_model_factory("qwen2"))
    eps = [Episode(prompt=Prompt(input_ids=[11, 12, 13 + i % 2]), response_ids=[], response_mask=[], group_id=i // 2)
           for i in range(4)]
    batch = Batch.from_episodes(eps, 0)
    batch.advantages = torch.zeros(batch.responses.shape)
    model = AutoModelForCausalLM.from_pretrained(path)
    logp, entropy = response_logprobs(model, batch.model_inputs("cpu"), batch.responses, with_entropy=True)
    assert logp.shape == entropy.shape == (4, 0) and logp.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = Actor(LocalTrainEngine(model, lr=1e-3), worker.actor_config(path, 0)).update(batch)
    assert out["actor/grad_norm"] == 0.0 and out["actor/skipped"] == 0.0
    _assert_same(model.state_dict(), before)
