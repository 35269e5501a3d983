"""Optimizer offload (actor.optimizer_offload): fp32 CPU masters, gradients and AdamW states.

The device copy of the model holds only compute-dtype weights. Checked against the plain local engine
(same updates in fp32), for small bf16 updates, for exact resume, and end to end.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rllava.config import load_config
from rllava.engines.local import LocalTrainEngine
from rllava.pipelines.run import run_experiment

ENGINE_KW = dict(lr=1e-3, weight_decay=0.01, warmup_steps=1, lr_scheduler="cosine", total_steps=5, max_grad_norm=0.5)


def batches(vocab: int, steps: int, micro: int = 2) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [[torch.randint(5, vocab, (2, 12), generator=gen) for _ in range(micro)] for _ in range(steps)]


def train(model, engine: LocalTrainEngine, steps: list[list[torch.Tensor]]) -> list[dict]:
    """Each step: several micro-batch backwards (gradient accumulation), then one optimizer step."""
    out = []
    for micro_batches in steps:
        for ids in micro_batches:
            with engine.compute(train=True):
                (model(input_ids=ids, labels=ids).loss / len(micro_batches)).backward()
            assert all(p.grad is None for p in engine.params) or engine.offload is None  # no gradient stays on the device
        out.append(engine.step())
    return out


def load(path: Path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def test_offload_fp32_equals_the_plain_engine(tiny_model_factory):
    """In fp32 the offloaded masters take exactly the plain engine's updates (accumulation, clipping, schedule)."""
    path = tiny_model_factory("qwen2")
    plain, offloaded = load(path), load(path)
    e_plain = LocalTrainEngine(plain, **ENGINE_KW)
    e_off = LocalTrainEngine(offloaded, **ENGINE_KW, optimizer_offload=True)
    steps = batches(plain.config.vocab_size, 3)
    m_plain, m_off = train(plain, e_plain, steps), train(offloaded, e_off, steps)
    assert [m["grad_norm"] for m in m_plain] == pytest.approx([m["grad_norm"] for m in m_off], rel=1e-6)
    assert m_plain[-1]["lr"] == m_off[-1]["lr"]
    before = load(path).state_dict()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in plain.named_parameters())  # training moved them
    for (name, p), q, master in zip(plain.named_parameters(), offloaded.parameters(), e_off.offload.masters):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
        assert torch.equal(master, q.detach())  # fp32 on the device: the device weight is the master


def test_offload_bf16_keeps_small_updates(tiny_model_factory):
    """bf16 weights on the device, one lr=1e-6 step: the fp32 masters take it, pure bf16 parameters mostly lose it."""
    path = tiny_model_factory("qwen2", "small")
    kw = dict(lr=1e-6, compute_dtype="bfloat16")
    steps = batches(1000, 1, micro=1)

    offloaded = load(path)  # fp32 from the folder: the masters start at full precision
    before = {n: p.detach().clone() for n, p in offloaded.named_parameters()}
    engine = LocalTrainEngine(offloaded, **kw, optimizer_offload=True)
    assert all(p.dtype == torch.bfloat16 for p in offloaded.parameters())
    assert all(m.dtype == torch.float32 for m in engine.offload.masters)
    train(offloaded, engine, steps)
    changed = sum(int((m != before[n]).sum()) for n, m in zip(engine.names, engine.offload.masters))
    total = sum(m.numel() for m in engine.offload.masters)
    for p, m in zip(engine.params, engine.offload.masters):
        assert torch.equal(p.detach(), m.to(torch.bfloat16))  # the device weights are the rounded masters

    pure = load(path, torch.bfloat16)
    pure_before = {n: p.detach().clone() for n, p in pure.named_parameters()}
    train(pure, LocalTrainEngine(pure, **kw), steps)
    pure_changed = sum(int((p.detach() != pure_before[n]).sum()) for n, p in pure.named_parameters())
    print(f"changed after one lr=1e-6 step: fp32 masters {changed / total:.4f}, pure bf16 {pure_changed / total:.4f}")
    assert changed / total > 0.9
    assert pure_changed < 0.5 * changed


def test_offload_save_and_load_resume_exactly(tiny_model_factory, tmp_path):
    """The engine folder holds the fp32 masters: a fresh engine loaded from it continues bit for bit."""
    path = tiny_model_factory("qwen2")
    kw = dict(ENGINE_KW, compute_dtype="bfloat16", optimizer_offload=True)
    steps = batches(1000, 3)
    straight = load(path)
    e_straight = LocalTrainEngine(straight, **kw)
    train(straight, e_straight, steps[:2])
    e_straight.save(tmp_path / "engine")
    train(straight, e_straight, steps[2:])

    resumed = load(path)
    e_resumed = LocalTrainEngine(resumed, **kw)
    e_resumed.load(tmp_path / "engine")
    train(resumed, e_resumed, steps[2:])
    for a, b in zip(e_straight.offload.masters, e_resumed.offload.masters):
        assert torch.equal(a, b)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_offload_export_writes_the_fp32_masters(tiny_model_factory, tmp_path):
    """An fp32 (or as-trained) HF export under offload holds the fp32 masters, not the bf16 device copy widened;
    a bf16 export is the masters rounded once; the device parameters are left as they were."""
    path = tiny_model_factory("qwen2")
    model = load(path)
    engine = LocalTrainEngine(model, **ENGINE_KW, compute_dtype="bfloat16", optimizer_offload=True)
    train(model, engine, batches(1000, 2))
    masters = dict(zip(engine.names, engine.offload.masters))
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in masters.values())  # bf16 would round them
    for dtype in (torch.float32, None):
        engine.export_hf(tmp_path / str(dtype), dtype=dtype)
        exported = load_file(tmp_path / str(dtype) / "model.safetensors")
        for name, master in masters.items():
            assert torch.equal(exported[name], master), (dtype, name)
        assert torch.equal(load(tmp_path / str(dtype)).model.norm.weight, masters["model.norm.weight"])
    engine.export_hf(tmp_path / "bf16", dtype=torch.bfloat16)
    exported = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(torch.equal(exported[n], m.to(torch.bfloat16)) for n, m in masters.items())
    assert all(p.dtype == torch.bfloat16 and torch.equal(p.detach(), m.to(torch.bfloat16))
               for p, m in zip(engine.params, engine.offload.masters))
    train(model, engine, batches(1000, 1))  # still trains after the export put the device weights back


def test_optimizer_offload_is_for_the_local_engine():
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    with pytest.raises(ValueError, match="optimizer_offload is for actor.strategy=local"):
        FSDP2TrainEngine(torch.nn.Linear(2, 2), lr=1e-3, optimizer_offload=True)


@pytest.mark.parametrize("extra", [[], ["model.lora_rank=8", "algorithm.kl_coef=0.05"], ["algorithm.adv_estimator=gae"]],
                         ids=["full", "lora", "ppo_critic"])
def test_grpo_with_optimizer_offload(tiny_model_factory, short_counting_run, extra):
    """GRPO on a tiny Qwen2-VL with bf16 device weights and CPU masters: rollout, update, checkpoint, export.
    Under LoRA only the adapters get masters; the frozen base is bf16 and serves as the KL reference. A PPO
    critic is offloaded like the actor."""
    result = run_experiment(load_config(None, short_counting_run("model.dtype=bfloat16", "actor.optimizer_offload=true",
                                                                 *extra)))
    assert result["steps"] == 2
    model = tiny_model_factory("qwen2_vl")
    before, after = load_file(str(model / "model.safetensors")), load_file(f"{result['final_model']}/model.safetensors")
    # The tiny model is released in fp32, so export_dtype=auto writes the fp32 masters (not the bf16 device copy).
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if not extra:  # full fine-tuning: every trained weight is its master, at full precision
        from transformers import AutoModelForImageTextToText

        masters = torch.load(Path(result["final_model"]).parent / "engine" / "engine.pt", weights_only=False)["model"]
        exported = AutoModelForImageTextToText.from_pretrained(result["final_model"]).state_dict()
        assert exported["lm_head.weight"].dtype == torch.float32
        assert all(torch.equal(exported[k], masters[k]) for k in masters)
