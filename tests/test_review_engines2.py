"""Engine review 2: resuming an fp16 run from a checkpoint written without fp16 (local and FSDP2), and the FSDP2
stand-in vision run on families whose `get_image_features` returns more than the base module reads (LLaVA-1.5's
`vision_feature_layer=-2`, LLaVA-OneVision): it must reach exactly the parameters a real image reaches.

This file is also the torchrun worker: `python tests/test_review_engines2.py OUT LM_PATH ONEVISION_PATH` (2 ranks)
writes what each rank saw, section by section, to OUT/<section>_rank<r>.pt: a section that kills the ranks (a gloo
size mismatch aborts the process) leaves the earlier sections' results readable.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from dist_scripts.launch import on_every_rank, start_torchrun, stop_torchrun
from test_review_engines import _logprob_step, vlm_batch

SECTIONS = ("resume", "onevision")


def lm_tokens(rank: int) -> torch.Tensor:
    return torch.randint(300, 900, (4, 9), generator=torch.Generator().manual_seed(0))[2 * rank:2 * rank + 2]


# ---- torchrun side


def _resume(out: Path, lm_path: str) -> dict:
    """An fp32 run's checkpoint resumed with model.dtype=float16 (moving a run to GPUs without bf16)."""
    from transformers import AutoModelForCausalLM

    from rllava.engines import distributed as du
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    ids = lm_tokens(du.rank())
    fp32 = FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(lm_path), lr=1e-3, compute_dtype="float32")
    with fp32.compute(train=True):
        fp32.backward(fp32.model(input_ids=ids, labels=ids).loss / 2)
    fp32.step()
    fp32.save(out / "fp32_ckpt")
    fp16 = FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(lm_path), lr=1e-3, compute_dtype="float16")
    try:
        fp16.load(out / "fp32_ckpt")
    except BaseException as e:  # (DCP's CheckpointException is a BaseException; every rank raises it)
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    with fp16.compute(train=True):
        fp16.backward(fp16.model(input_ids=ids, labels=ids).loss / 2)
    step = fp16.step()
    return {"scale": fp16.scaler.state_dict(), "step": step, "skipped_steps": fp16.skipped_steps}


def _onevision(vlm_path: str) -> dict:
    """Rank 0's micro-batch is text-only, rank 1's has an image: rank 0 runs the tower on the blank probe."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rllava.engines import distributed as du
    from rllava.engines.fsdp2 import FSDP2TrainEngine, blank_image_inputs

    probe = blank_image_inputs(AutoProcessor.from_pretrained(vlm_path))
    engine = FSDP2TrainEngine(AutoModelForImageTextToText.from_pretrained(vlm_path), lr=1e-3, max_grad_norm=0.0,
                              media_probe=probe)
    return {"step": _logprob_step(engine, vlm_batch(vlm_path, with_image=du.rank() == 1))}


def main() -> None:
    from rllava.engines import distributed as du

    out, lm_path, vlm_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    def work() -> None:
        torch.save(_resume(out, lm_path), out / f"resume_rank{du.rank()}.pt")
        torch.save(_onevision(vlm_path), out / f"onevision_rank{du.rank()}.pt")

    on_every_rank(work)


# ---- tests


@pytest.fixture(scope="module")
def ranks(tiny_model_factory, tmp_path_factory) -> dict[str, list[dict] | str]:
    """Each section's per-rank results, or the torchrun log's tail where a section left none."""
    out = tmp_path_factory.mktemp("review2")
    log = out / "torchrun.log"
    proc = start_torchrun([__file__, str(out), str(tiny_model_factory("qwen2")),
                           str(tiny_model_factory("llava_onevision"))], log)
    try:
        proc.wait(timeout=150)
    except Exception:
        pass
    finally:
        stop_torchrun(proc)
    found: dict[str, list[dict] | str] = {}
    for section in SECTIONS:
        files = [out / f"{section}_rank{r}.pt" for r in range(2)]
        found[section] = [torch.load(f, weights_only=False) for f in files] if all(f.exists() for f in files) \
            else log.read_text(errors="replace")[-4000:]
    return found


def _reached(model, loss) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,feature_layer", [("llava", -2), ("llava_onevision", None), ("qwen3_vl", None)])
def test_vision_stand_in_reaches_the_parameters_a_real_image_reaches(tiny_model_factory, tmp_path, family,
                                                                     feature_layer):
    """FSDP reduce-scatters the gradients of the parameters that have one: the text-only rank's stand-in must reach
    exactly those a real image reaches. Summing every output of `get_image_features` also reached the raw tower
    output: LLaVA-1.5's last vision block (its features are `vision_feature_layer=-2`, the block after it is unused;
    a whole FSDP unit reduce-scattered on one rank only) and LLaVA-OneVision's post-layernorm. Qwen3-VL's
    deepstack mergers, which the base does read, must stay reached."""
    import json
    import shutil
    from types import SimpleNamespace

    from torch.distributed.fsdp import MixedPrecisionPolicy
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rllava.engines.fsdp2 import FSDP2TrainEngine, blank_image_inputs
    from rllava.models.logprobs import response_logprobs

    path = tiny_model_factory(family)
    if feature_layer is not None:  # the tiny model's tower has 2 layers; -2 is LLaVA-1.5's released setting
        path = Path(shutil.copytree(path, tmp_path / family))
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "vision_feature_layer": feature_layer}))
    model = AutoModelForImageTextToText.from_pretrained(path)
    reached = {}
    for with_image in (True, False):
        batch = vlm_batch(str(path), with_image)
        reached[with_image] = _reached(model, response_logprobs(model, batch.model_inputs("cpu"), batch.responses)[0].sum())
    engine = SimpleNamespace(_media_probe=blank_image_inputs(AutoProcessor.from_pretrained(path)),
                             mp_policy=MixedPrecisionPolicy(), device=torch.device("cpu"))
    stand_in = _reached(model, FSDP2TrainEngine._vision_stand_in(engine, model.base_model))
    vision = reached[True] - reached[False]  # what an image adds: tower, connector (and LLaVA-OneVision's newline)
    assert vision and stand_in == vision, (sorted(stand_in - vision), sorted(vision - stand_in))


def test_vision_stand_in_is_zero_where_the_tower_overflows():
    """The stand-in is added to the text-only rank's hidden states, so it must be 0 even where fp16 features overflow;
    0 x nan_to_num(features).sum() was NaN with two infs (each became fp32's max, their sum inf), poisoning every log-prob
    of the rank (the old log-probs of a no-grad pass too). Its gradient stays 0 and reaches the tower."""
    from types import SimpleNamespace

    from torch import nn
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from rllava.engines.fsdp2 import FSDP2TrainEngine

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Parameter(torch.full((3,), 2.0, dtype=torch.float16))

        def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values * self.proj  # [60000, 60000, 1] x 2 overflows fp16 (max 65504)

    base = Base()
    engine = SimpleNamespace(_media_probe={"pixel_values": torch.tensor([6e4, 6e4, 1.0])},
                             mp_policy=MixedPrecisionPolicy(param_dtype=torch.float16), device=torch.device("cpu"))
    stub = FSDP2TrainEngine._vision_stand_in(engine, base)
    assert float(stub.detach()) == 0.0
    (stub * 2.0 ** 16).backward()
    assert base.proj.grad is not None and torch.equal(base.proj.grad, torch.zeros(3, dtype=torch.float16))


def test_local_fp16_resume_of_a_bf16_checkpoint_starts_from_the_initial_scale(tiny_model_factory, tmp_path):
    """A bf16 run's engine.pt carried its disabled scaler's scale, 1.0; an fp16 run resumed from it trained at
    scale 1 (the gradients underflow, as with no scaling) and needed 16 x 2000 steps to grow back to 2^16."""
    from transformers import AutoModelForCausalLM

    from rllava.engines.local import LocalTrainEngine

    path = tiny_model_factory("qwen2")
    LocalTrainEngine(AutoModelForCausalLM.from_pretrained(path), lr=1e-3, compute_dtype="bfloat16").save(tmp_path)
    fp16 = LocalTrainEngine(AutoModelForCausalLM.from_pretrained(path), lr=1e-3, compute_dtype="float16")
    fp16.load(tmp_path)
    assert (fp16.scaler.scale_value, fp16.scaler.good_steps) == (2.0 ** 16, 0)


def test_fsdp2_fp16_resume_of_a_checkpoint_without_a_loss_scale(ranks):
    """The DCP template held `loss_scale`, which a bf16 or fp32 run never writes: the load failed with "Missing key
    in checkpoint state_dict: loss_scale.scale". It now starts from the initial scale and trains on."""
    seen = ranks["resume"]
    assert isinstance(seen, list), seen
    for rank in seen:
        assert "error" not in rank, rank["error"]
        assert rank["scale"] == {"scale": 2.0 ** 16, "good_steps": 1}  # one finite step since the resume
        assert rank["step"]["skipped"] == 0.0 and rank["step"]["loss_scale"] == 2.0 ** 16
        assert rank["skipped_steps"] == 0


def test_fsdp2_mixed_images_on_llava_onevision_match_one_process(ranks, tiny_model_factory):
    """LLaVA-OneVision's `get_image_features` returns the SigLIP tower's own output (through its post-layernorm)
    beside the packed features the base module reads. The stand-in summed both, so the text-only rank had gradients
    for post_layernorm and the image rank none: the root's reduce-scatters differed in size (gloo aborted: "325312 vs
    325184"; NCCL hangs or mixes up the buffers). Summing only what the base reads, one step matches one process."""
    from transformers import AutoModelForImageTextToText

    from rllava.engines.local import LocalTrainEngine
    from rllava.models.logprobs import response_logprobs

    seen = ranks["onevision"]
    assert isinstance(seen, list), seen
    path = str(tiny_model_factory("llava_onevision"))
    model = AutoModelForImageTextToText.from_pretrained(path)
    local = LocalTrainEngine(model, lr=1e-3, max_grad_norm=0.0)
    with local.compute(train=True):
        for with_image in (False, True):  # rank 0's row, then rank 1's
            batch = vlm_batch(path, with_image)
            response_logprobs(model, batch.model_inputs(local.device), batch.responses)[0].sum().backward()
    one = local.step()
    for rank in seen:
        assert rank["step"]["skipped"] == 0.0
        assert rank["step"]["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)


if __name__ == "__main__":
    main()
