"""Optimizers by name (actor.optimizer): 8-bit AdamW states (bitsandbytes) against fp32 AdamW on a real
tiny model, exact resume with and without optimizer offload, end to end (fsdp2: tests/test_distributed_train.py)."""
from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rllava.config import ConfigError, MissingPackageError, load_config
from rllava.engines import OPTIMIZERS
from rllava.engines.local import LocalTrainEngine
from rllava.pipelines.run import run_experiment

KW = dict(lr=1e-3, weight_decay=0.01, warmup_steps=1, total_steps=6, max_grad_norm=1.0)


def lm_steps(model, engine: LocalTrainEngine, n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, model.config.vocab_size, (2, 16), generator=gen)
        with engine.compute(train=True):
            model(input_ids=ids, labels=ids).loss.backward()
        out.append(engine.step())
    return out


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


def test_adamw_8bit_follows_fp32_adamw_with_a_quarter_of_the_state(tiny_model_factory):
    path = tiny_model_factory("qwen2", "small")
    start = AutoModelForCausalLM.from_pretrained(path).state_dict()
    runs = {}
    for name in ("adamw", "adamw_8bit"):
        model = AutoModelForCausalLM.from_pretrained(path)
        engine = LocalTrainEngine(model, **KW, optimizer=name)
        metrics = lm_steps(model, engine, 5)
        runs[name] = model, engine, metrics
    (ref, e_ref, m_ref), (q8, e_q8, m_q8) = runs["adamw"], runs["adamw_8bit"]
    # Same data, same first gradient; later steps drift only by the quantised moments.
    assert m_q8[0]["grad_norm"] == pytest.approx(m_ref[0]["grad_norm"], rel=1e-6)
    delta_ref = torch.cat([(p.detach() - start[n]).flatten() for n, p in ref.named_parameters()])
    delta_q8 = torch.cat([(p.detach() - start[n]).flatten() for n, p in q8.named_parameters()])
    cosine = torch.nn.functional.cosine_similarity(delta_ref.double(), delta_q8.double(), dim=0)
    rel = (delta_q8 - delta_ref).norm() / delta_ref.norm()
    print(f"8-bit vs fp32 AdamW after 5 steps: cosine {cosine:.5f}, relative difference {rel:.4f}")
    assert cosine > 0.999 and rel < 0.05
    big = [p for p in e_q8.params if p.numel() >= 4096]  # smaller tensors keep fp32 moments
    assert all(e_q8.optimizer.state[p]["state1"].dtype == torch.uint8 for p in big)
    ratio = state_bytes(e_q8.optimizer) / state_bytes(e_ref.optimizer)
    print(f"optimizer state bytes, 8-bit / fp32: {ratio:.3f}")
    assert ratio < 0.3


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_adamw_8bit_save_and_load_resume_exactly(tiny_model_factory, tmp_path, offload):
    path = tiny_model_factory("qwen2")
    kw = dict(KW, optimizer="adamw_8bit", optimizer_offload=offload)
    straight = AutoModelForCausalLM.from_pretrained(path)
    e_straight = LocalTrainEngine(straight, **kw)
    lm_steps(straight, e_straight, 2)
    e_straight.save(tmp_path / "engine")
    lm_steps(straight, e_straight, 2, seed=1)

    resumed = AutoModelForCausalLM.from_pretrained(path)
    e_resumed = LocalTrainEngine(resumed, **kw)
    e_resumed.load(tmp_path / "engine")
    lm_steps(resumed, e_resumed, 2, seed=1)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_grpo_with_8bit_adamw_end_to_end(tiny_model_factory, short_counting_run):
    """A PPO run (actor and critic both on 8-bit AdamW) trains, checkpoints and exports."""
    from safetensors.torch import load_file

    over = short_counting_run("actor.optimizer=adamw_8bit", "algorithm.adv_estimator=gae", "critic.optimizer=adamw_8bit")
    result = run_experiment(load_config(None, over))
    assert result["steps"] == 2
    before = load_file(str(tiny_model_factory("qwen2_vl") / "model.safetensors"))
    after = load_file(f"{result['final_model']}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_unknown_optimizer_or_missing_package_fail_before_loading(tmp_path, monkeypatch):
    over = ["model.path=/nonexistent/model", "actor.optimizer=adam8", f"trainer.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="actor.optimizer: unknown optimizer 'adam8'.*adamw_8bit"):
        run_experiment(load_config(None, over))
    import rllava.engines.optimizers as opt

    with monkeypatch.context() as m:  # as if bitsandbytes were not installed
        m.setitem(OPTIMIZERS.entry("adamw_8bit").meta, "package", "bitsandbytes_not_installed")
        with pytest.raises(MissingPackageError, match=r"needs bitsandbytes_not_installed: pip install 'rllava\[bnb\]'"):
            run_experiment(load_config(None, [*over[:1], "actor.optimizer=adamw_8bit", over[2]]))
        with pytest.raises(ImportError, match=r"needs bitsandbytes: pip install 'rllava\[bnb\]'"):
            m.setitem(sys.modules, "bitsandbytes", None)
            opt.adamw_8bit([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    assert {"adamw", "adamw_8bit"} <= set(OPTIMIZERS.names())


def test_logged_lr_is_the_rate_the_update_used():
    """`lr` in a step's metrics is the rate that step's update ran at, not the next one: warm-up over 4 steps,
    then linear decay over the 4 after, by hand."""
    model = torch.nn.Linear(2, 1)
    engine = LocalTrainEngine(model, lr=1.0, warmup_steps=4, lr_scheduler="linear", total_steps=8, max_grad_norm=0.0)
    logged, used = [], []
    for _ in range(6):
        model(torch.ones(1, 2)).sum().backward()
        used.append(engine.optimizer.param_groups[0]["lr"])
        logged.append(engine.step()["lr"])
    assert logged == used == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75])


def test_the_config_names_every_lr_schedule_the_engines_have():
    from rllava.config import LR_SCHEDULERS
    from rllava.engines.local import LR_DECAYS

    assert set(LR_SCHEDULERS) == set(LR_DECAYS)
