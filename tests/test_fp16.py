"""fp16 compute with a dynamic loss scale (model.dtype=float16, for GPUs without bf16), on CPU autocast.

This file is also the torchrun worker: `python tests/test_fp16.py OUT LM_PATH` (2 ranks) writes what the FSDP2
ranks saw to OUT/results.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import on_every_rank, start_torchrun, wait_torchrun

from rllava.config import ConfigError, load_config
from rllava.engines.loss_scale import LossScaler

SMALL = 1e-4  # a token-mean loss over 10^4+ tokens has gradients this much smaller than one over a short batch


def tokens(rows: slice = slice(0, 4)) -> torch.Tensor:
    return torch.randint(300, 900, (4, 32), generator=torch.Generator().manual_seed(0))[rows]


def engine_grads(path: Path, dtype: str, scaled: bool = True) -> torch.Tensor:
    """The gradient (flattened, as the optimizer sees it) of SMALL x the LM loss, through a local engine."""
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    model = AutoModelForCausalLM.from_pretrained(path)
    engine = LocalTrainEngine(model, lr=1e-3, compute_dtype=dtype, max_grad_norm=0.0)
    if not scaled:
        engine.scaler = LossScaler(enabled=False)
    with engine.compute(train=True):
        engine.backward(model(input_ids=tokens(), labels=tokens()).loss * SMALL)
    engine.scaler.unscale_([p.grad for p in engine.params if p.grad is not None])
    return torch.cat([p.grad.flatten() for p in engine.params if p.grad is not None])


def test_loss_scale_halves_on_overflow_and_grows_after_finite_steps():
    scaler = LossScaler(enabled=True, init_scale=1024.0, growth_interval=3)
    assert float(scaler.scale(torch.tensor(2.0))) == 2048.0
    scaler.update(finite=False)
    assert scaler.scale_value == 512.0
    for _ in range(2):
        scaler.update(finite=True)
    assert scaler.scale_value == 512.0  # 2 of the 3 finite steps
    scaler.update(finite=True)
    assert scaler.scale_value == 1024.0 and scaler.good_steps == 0
    scaler.update(finite=True)
    restored = LossScaler(enabled=True)
    restored.load_state_dict(scaler.state_dict())
    assert (restored.scale_value, restored.good_steps) == (1024.0, 1)
    tiny = LossScaler(enabled=True, init_scale=1.0)
    tiny.update(finite=False)
    assert tiny.scale_value == 1.0  # never below min_scale
    off = LossScaler(enabled=False)
    loss = torch.tensor(3.0)
    assert off.scale(loss) is loss and off.scale_value == 1.0
    grads = [torch.ones(2)]
    off.unscale_(grads)
    off.update(finite=False)
    assert torch.equal(grads[0], torch.ones(2)) and off.scale_value == 1.0


def test_fp16_gradients_match_fp32_with_the_scale_and_underflow_without(tiny_model_factory):
    """Measured on a tiny qwen2: without the scale, 44 % of the gradient's elements round to 0 in fp16 and it is
    90 % off fp32's; with it, the gradient is within 0.1 % of fp32's."""
    path = tiny_model_factory("qwen2")
    reference = engine_grads(path, "float32")
    scaled, unscaled = engine_grads(path, "float16"), engine_grads(path, "float16", scaled=False)
    assert float((reference == 0).float().mean()) == 0.0
    assert float((scaled - reference).norm() / reference.norm()) < 0.01
    assert float((scaled == 0).float().mean()) < 1e-4
    assert float((unscaled == 0).float().mean()) > 0.2
    assert float((unscaled - reference).norm() / reference.norm()) > 0.5


def test_fp16_overflow_skips_the_step_halves_the_scale_and_resumes_exactly(tiny_model_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    path = tiny_model_factory("qwen2")
    model = AutoModelForCausalLM.from_pretrained(path)
    engine = LocalTrainEngine(model, lr=1e-3, compute_dtype="float16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with engine.compute(train=True):  # 2^16 x 1e4 overflows fp16 (max 65504) in backward
        engine.backward(model(input_ids=tokens(), labels=tokens()).loss * 1e4)
    overflow = engine.step()
    assert overflow["skipped"] == 1.0 and overflow["loss_scale"] == 2.0 ** 16
    assert engine.scaler.scale_value == 2.0 ** 15 and engine.skipped_steps == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with engine.compute(train=True):
        engine.backward(model(input_ids=tokens(), labels=tokens()).loss)
    ok = engine.step()
    assert ok["skipped"] == 0.0 and ok["loss_scale"] == 2.0 ** 15 and ok["grad_norm"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    engine.save(tmp_path / "ckpt")

    again = LocalTrainEngine(AutoModelForCausalLM.from_pretrained(path), lr=1e-3, compute_dtype="float16")
    again.load(tmp_path / "ckpt")
    assert (again.scaler.scale_value, again.scaler.good_steps) == (2.0 ** 15, 1)
    for e in (engine, again):
        with e.compute(train=True):
            e.backward(e.model(input_ids=tokens(), labels=tokens()).loss)
        e.step()
    for (k, v), w in zip(engine.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_float16_needs_fp32_master_weights():
    from rllava.pipelines.run import check_settings

    check_settings(load_config(None, ["model.dtype=float16"]))
    check_settings(load_config(None, ["model.dtype=float16", "actor.master_weights_fp32=false",
                                      "actor.optimizer_offload=true"]))  # the masters live on the CPU in fp32
    with pytest.raises(ConfigError, match=r"model.dtype=float16 with actor.master_weights_fp32=false"):
        check_settings(load_config(None, ["model.dtype=float16", "actor.master_weights_fp32=false"]))


def test_fp16_rl_run_trains_end_to_end(tiny_model_factory, tmp_path):
    """`rllava train` with model.dtype=float16: rollouts and updates under fp16 autocast, the scale logged."""
    import json

    from rllava.pipelines.run import run_experiment
    from rllava.tasks import make_task

    data = make_task("counting", tmp_path / "counting", n=16, seed=0)
    run_experiment(load_config(None, [
        f"model.path={tiny_model_factory('qwen2_vl')}", f"data.train_files={data / 'train.parquet'}",
        "data.template={{ prompt }} Answer with a number.", "data.batch_size=2", "rollout.n=2",
        "rollout.max_new_tokens=4", "model.dtype=float16", "algorithm.kl_coef=0.01", "trainer.total_steps=2",
        "trainer.val_before_train=false", f"trainer.output_dir={tmp_path}", "trainer.experiment_name=fp16",
        "trainer.progress_bar=false", "trainer.loggers=[jsonl]", "trainer.device=cpu"]))
    rows = [json.loads(ln) for ln in (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "actor/loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["actor/loss_scale"] == 2.0 ** 16 and r["actor/skipped"] == 0.0
        assert r["actor/grad_norm"] > 0 and torch.isfinite(torch.tensor(r["actor/loss"]))


# ---- torchrun side: FSDP2 with fp16 compute


def _worker(out: Path, lm_path: str) -> None:
    from transformers import AutoModelForCausalLM

    from rllava.engines import distributed as du
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    rank = du.rank()
    engine = FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(lm_path), lr=1e-3, compute_dtype="float16",
                              max_grad_norm=0.0)
    ids = tokens(slice(2 * rank, 2 * rank + 2))
    res = {}
    with engine.compute(train=True):  # an overflow on rank 1 only
        engine.backward(engine.model(input_ids=ids, labels=ids).loss * (1e4 if rank == 1 else 1.0))
    res["overflow"] = engine.step()
    res["scale_after"] = engine.scaler.scale_value
    with engine.compute(train=True):  # the ranks' halves sum to the global mean, times SMALL
        engine.backward(engine.model(input_ids=ids, labels=ids).loss / 2 * SMALL)
    res["step"] = engine.step()
    gathered = du.gather_objects(res)
    if du.is_main():
        torch.save(gathered, out / "results.pt")


def main() -> None:
    on_every_rank(lambda: _worker(Path(sys.argv[1]), sys.argv[2]))


def test_fsdp2_fp16_scales_like_one_process(tiny_model_factory, tmp_path):
    """2 ranks (gloo): an overflow on one rank skips the step and halves the scale on both; the next step's
    gradient norm (unscaled, summed over ranks) equals one process's under fp16 with the same scale."""
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    path = tiny_model_factory("qwen2")
    proc = start_torchrun([__file__, str(tmp_path), str(path)], tmp_path / "torchrun.log")
    wait_torchrun(proc, tmp_path / "torchrun.log", timeout=120)
    ranks = torch.load(tmp_path / "results.pt", weights_only=False)
    model = AutoModelForCausalLM.from_pretrained(path)
    local = LocalTrainEngine(model, lr=1e-3, compute_dtype="float16", max_grad_norm=0.0)
    local.scaler.scale_value = 2.0 ** 15
    with local.compute(train=True):
        for r in range(2):
            ids = tokens(slice(2 * r, 2 * r + 2))
            local.backward(model(input_ids=ids, labels=ids).loss / 2 * SMALL)
    one = local.step()
    for seen in ranks:
        assert seen["overflow"]["skipped"] == 1.0 and seen["scale_after"] == 2.0 ** 15
        assert seen["step"]["skipped"] == 0.0 and seen["step"]["loss_scale"] == 2.0 ** 15
        assert seen["step"]["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-2)


if __name__ == "__main__":
    main()
