"""GPU-only checks: bf16 autocast with fp32 master weights, log-prob memory, rollout and training on CUDA.

Skipped where no GPU is visible (CI, the CPU dev machines); `scripts/gpu_check.sh` runs them on a GPU
machine and docs/benchmarks.md records the results.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rllava.config import load_config
from rllava.engines.local import LocalTrainEngine
from rllava.models.logprobs import response_logprobs
from rllava.pipelines.run import run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parents[1]


def _nll_step(model, engine: LocalTrainEngine, ids: torch.Tensor) -> None:
    with engine.compute(train=True):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    engine.step()


def _changed_fraction(before: dict, model) -> float:
    changed = total = 0
    for name, p in model.named_parameters():
        changed += int((p.detach().float() != before[name].float()).sum())
        total += p.numel()
    return changed / total


def test_bf16_autocast_keeps_lr_1e6_updates(tiny_model_factory):
    """fp32 master weights + bf16 autocast apply a 1e-6 update; pure bf16 parameters round most of it away."""
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory("qwen2", "small")
    ids = torch.randint(10, 500, (4, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    fractions = {}
    for name, param_dtype in (("fp32_master", torch.float32), ("pure_bf16", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=param_dtype).cuda()
        engine = LocalTrainEngine(model, lr=1e-6, compute_dtype="bfloat16", device="cuda")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _nll_step(model, engine, ids)
        fractions[name] = _changed_fraction(before, model)
    print(f"changed fraction after one lr=1e-6 step: {fractions}")
    assert fractions["fp32_master"] > 0.9
    assert fractions["pure_bf16"] < 0.5 * fractions["fp32_master"]


def _logprob_peak_bytes(model, B: int, P: int, T: int, chunk: int) -> int:
    """Peak GPU bytes above the weights for forward + backward of response log-probs and entropy."""
    ids = torch.randint(0, model.config.vocab_size, (B, P + T), device="cuda")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    logp, ent = response_logprobs(model, inputs, ids[:, P:], chunk_size=chunk, with_entropy=True)
    (logp.sum() + ent.sum()).backward()
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated() - base


def test_logprobs_memory_does_not_grow_with_full_vocab_logits():
    """At a 152k vocab, 4x more response tokens add far less than their [rows, V] fp32 logits would."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=151_936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).cuda().to(torch.bfloat16)
    B, P, chunk = 8, 64, 512
    small, large = _logprob_peak_bytes(model, B, P, 512, chunk), _logprob_peak_bytes(model, B, P, 2048, chunk)
    logits_growth = B * (2048 - 512) * cfg.vocab_size * 4
    chunk_logits = chunk * cfg.vocab_size * 4
    print(f"peak above weights: {small / 2**30:.2f} GiB at {B * 512} rows, {large / 2**30:.2f} GiB at {B * 2048} "
          f"rows; fp32 logits of the extra rows {logits_growth / 2**30:.2f} GiB; one fp32 chunk "
          f"{chunk_logits / 2**30:.2f} GiB")
    assert large - small < 0.1 * logits_growth
    # and the values match a naive bf16-forward, fp32-log-softmax reference on one row
    ids = torch.randint(0, cfg.vocab_size, (1, P + 256), device="cuda")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logp, _ = response_logprobs(model, inputs, ids[:, P:], chunk_size=chunk)
        logits = model(**inputs).logits[0, P - 1:-1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, ids[0, P:, None]).squeeze(-1)
    torch.testing.assert_close(logp[0], ref, atol=0.05, rtol=0)


def _counting_overrides(model: Path, data: Path, out: Path) -> list[str]:
    return [f"model.path={model}", f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
            "data.template={{ prompt }} Answer with a number.", "data.batch_size=4", "data.max_val_samples=8",
            "rollout.n=4", "rollout.max_new_tokens=8", "actor.lr=1e-4", "reward.functions={count: 1.0}",
            "algorithm.entropy_coef=0.01",  # a gradient even when every reward in a group is equal
            "trainer.device=cuda", "model.dtype=bfloat16", f"trainer.output_dir={out}", "trainer.progress_bar=false",
            "trainer.loggers=[jsonl]", "trainer.total_steps=3", "trainer.save_freq=3"]


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from rllava.tasks import make_task

    return make_task("counting", tmp_path_factory.mktemp("data") / "counting", n=40, seed=0)


def test_grpo_on_cuda_bf16(tiny_model_factory, counting_data, tmp_path):
    """Three GRPO steps on the GPU with bf16 autocast: rollout, update, checkpoint; the weights move."""
    from safetensors.torch import load_file

    model = tiny_model_factory("qwen2_vl", "small")
    result = run_experiment(load_config(None, _counting_overrides(model, counting_data, tmp_path)))
    assert result["steps"] == 3
    before, after = load_file(str(model / "model.safetensors")), load_file(f"{result['final_model']}/model.safetensors")
    assert all(t.dtype == torch.float32 for t in after.values())  # the exported master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if "time/step" in r][-1]
    assert 0 < step["perf/gpu_allocated_gb"] <= step["perf/gpu_peak_allocated_gb"] <= step["perf/gpu_peak_reserved_gb"]


def test_grpo_on_cuda_fp16(tiny_model_factory, counting_data, tmp_path):
    """Three GRPO steps with fp16 autocast and the dynamic loss scale (T4/V100 users): finite, logged, moving."""
    model = tiny_model_factory("qwen2_vl", "small")
    over = [o.replace("model.dtype=bfloat16", "model.dtype=float16") for o in
            _counting_overrides(model, counting_data, tmp_path)]
    result = run_experiment(load_config(None, over))
    rows = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "actor/loss" in r]
    assert len(steps) == 3 and all(r["actor/loss_scale"] >= 1.0 for r in steps)
    assert any(r["actor/skipped"] == 0.0 and r["actor/grad_norm"] > 0 for r in steps)


def _torchrun_train(overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "rllava",
           "train", *overrides]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_fsdp2_torchrun_nccl(tiny_model_factory, counting_data, tmp_path):
    """`torchrun -m rllava train actor.strategy=fsdp2` on one GPU with nccl, then resume from its checkpoint."""
    model = tiny_model_factory("qwen2_vl", "small")
    overrides = _counting_overrides(model, counting_data, tmp_path) + ["actor.strategy=fsdp2",
                                                                      "trainer.experiment_name=fsdp2"]
    _torchrun_train(overrides)
    _torchrun_train(overrides + ["trainer.total_steps=5", "trainer.resume=auto"])
    assert (tmp_path / "fsdp2" / "checkpoints" / "step_5" / "model" / "config.json").exists()


@pytest.mark.parametrize("extra", [["actor.param_offload=true"], ["model.lora_rank=8", "algorithm.kl_coef=0.05"]],
                         ids=["param_offload", "lora_with_reference"])
def test_fsdp2_variants_on_gpu(tiny_model_factory, counting_data, tmp_path, extra):
    """FSDP2 with CPU-offloaded parameters, and LoRA (reference = adapters off), train and export on one GPU."""
    from transformers import AutoModelForImageTextToText

    model = tiny_model_factory("qwen2_vl", "small")
    _torchrun_train(_counting_overrides(model, counting_data, tmp_path) + ["actor.strategy=fsdp2", *extra,
                                                                          "trainer.experiment_name=variant"])
    exported = tmp_path / "variant" / "checkpoints" / "step_3" / "model"
    loaded = AutoModelForImageTextToText.from_pretrained(exported).state_dict()
    initial = AutoModelForImageTextToText.from_pretrained(model).state_dict()
    assert loaded.keys() == initial.keys() and any(not torch.equal(initial[k], loaded[k]) for k in initial)


def _backward_peak_bytes(model, engine: LocalTrainEngine, ids: torch.Tensor) -> int:
    """Peak GPU bytes above the weights for one forward + backward (before the optimizer step)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with engine.compute(train=True):
        model(input_ids=ids, labels=ids).loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_optimizer_offload_on_cuda(tiny_model_factory):
    """actor.optimizer_offload on the GPU: bf16 weights there, fp32 masters on the host take a lr=1e-6 step, and
    backward never holds the whole gradient on the GPU (the plain bf16 engine does: 2 bytes a parameter)."""
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory("qwen2", "small")
    ids = torch.randint(10, 500, (4, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # on the CPU, as rllava loads it
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine = LocalTrainEngine(model, lr=1e-6, compute_dtype="bfloat16", device="cuda", optimizer_offload=True)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(m.device.type == "cpu" for m in engine.offload.masters) and engine.offload.staging.is_pinned()
    _nll_step(model, engine, ids)  # also the warm-up: first-use CUDA allocations (cuBLAS workspaces) happen here
    assert all(p.grad is None for p in model.parameters())
    changed = sum(int((m != before[n]).sum()) for n, m in zip(engine.names, engine.offload.masters))
    assert changed / sum(m.numel() for m in engine.offload.masters) > 0.9
    assert all(torch.equal(p.detach().cpu(), m.to(torch.bfloat16)) for p, m in zip(engine.params, engine.offload.masters))
    few = ids[:1, :8]  # few tokens: activations far smaller than the gradients, which then set the plain peak
    offload_peak = _backward_peak_bytes(model, engine, few)

    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    plain_engine = LocalTrainEngine(plain, lr=1e-6, compute_dtype="bfloat16", device="cuda")
    _nll_step(plain, plain_engine, ids)
    plain_peak = _backward_peak_bytes(plain, plain_engine, few)
    grad_bytes = sum(p.numel() * 2 for p in plain.parameters())
    print(f"backward peak above weights: offload {offload_peak / 2**20:.1f} MiB, plain bf16 {plain_peak / 2**20:.1f} MiB,"
          f" bf16 gradients {grad_bytes / 2**20:.1f} MiB")
    assert plain_peak - offload_peak > 0.7 * grad_bytes
