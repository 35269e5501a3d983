"""torchrun entry for tests/test_fsdp2.py, and the scenario both sides share.

`torchrun --nproc_per_node=2 fsdp2_worker.py OUT FAMILY=PATH ...` trains each tiny model with
FSDP2 on its half of a fixed batch and writes what rank 0 saw to OUT/results.pt. The test runs the
same scenario in one process with LocalTrainEngine and compares.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from rllava.algorithms import POLICY_LOSSES
from rllava.config import AlgorithmConfig
from rllava.data.types import Batch, Episode, Prompt
from rllava.engines import distributed as du
from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
from rllava.models.introspect import eos_token_ids, pad_token_id, placeholder_token_ids, unwrap
from rllava.models.logprobs import response_logprobs
from rllava.models.tiny_families import FAMILIES
from rllava.roles.actor import forward_inputs

STEPS = 3
SAVE_AFTER = 2  # the distributed checkpoint is taken after this step; resuming replays the rest
ENGINE_KW = dict(lr=1e-4, weight_decay=0.01, warmup_steps=1, lr_scheduler="cosine", total_steps=STEPS + 1,
                 max_grad_norm=1.0)
GEN = Sampling(n=1, temperature=0.0, max_new_tokens=6)
CHUNK = 4  # LM-head chunk: several head calls (and checkpoint recomputes) per micro-batch
SEQ_KEYS = ("mm_token_type_ids", "token_type_ids")
# Rows of the global batch: prompt p has samples 2p and 2p+1 (one group per rank), of different lengths.
RESPONSE_LENGTHS = [5, 3, 7, 2]
# Shared steps: rank 0's responses run 4 and 2 tokens (one pass at this cost a pass), rank 1's 6 and 1 (two
# passes), so rank 0 makes a filler pass to match rank 1's collectives.
PASS_TOKENS = 3


def load(path: Path):
    vision = FAMILIES[path.name.rsplit("-", 1)[0]].vision
    model = (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_pretrained(path)
    processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(path)
    return model, processor


def make_prompts(processor, vision: bool) -> list[Prompt]:
    out = []
    for i, text in enumerate(["How many circles?", "What colour is the big square?"]):
        content = ([{"type": "image"}] if vision else []) + [{"type": "text", "text": text}]
        chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        if vision:
            img = Image.fromarray(np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8))
            enc = processor(text=[chat], images=[[img]], return_tensors="pt")
        else:
            enc = processor(chat, return_tensors="pt")
        seq = {k: enc[k][0].tolist() for k in SEQ_KEYS if k in enc}
        mm = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *SEQ_KEYS)}
        out.append(Prompt(input_ids=enc["input_ids"][0].tolist(), mm=mm, seq=seq, text=chat))
    return out


def make_batch(processor, vision: bool) -> Batch:
    """4 sequences (2 prompts x 2 samples) with fixed random responses and advantages."""
    gen = torch.Generator().manual_seed(0)
    prompts = make_prompts(processor, vision)
    eps = []
    for row, n in enumerate(RESPONSE_LENGTHS):
        ids = torch.randint(300, 900, (n,), generator=gen).tolist()
        eps.append(Episode(prompt=prompts[row // 2], response_ids=ids, response_mask=[1] * n, group_id=row // 2))
    batch = Batch.from_episodes(eps, pad_token_id(processor))
    batch.advantages = torch.randn(batch.responses.shape, generator=gen) * batch.response_mask
    return batch


def old_logprobs(engine, batch: Batch) -> torch.Tensor:
    with engine.compute(train=False):
        logp, _ = response_logprobs(engine.model, batch.model_inputs(engine.device), batch.responses.to(engine.device),
                                    chunk_size=CHUNK)
    return logp.cpu()


def train_step(engine, batch: Batch, micro_rows: list[list[int]], global_tokens: float) -> dict[str, float]:
    """One optimizer step of PPO (token-mean) where each micro-batch's loss is weighted by its share of the
    *global* token count, so the ranks' losses (and gradients) sum to the single-process ones. The forward
    shares prompts only where every rank's micro-batch can (the shared path runs the sharded model twice);
    metrics["shared"] counts this rank's micro-batches that did."""
    cfg = AlgorithmConfig()
    loss_fn = POLICY_LOSSES.get("ppo")
    total, shared, calls = 0.0, 0, []
    hook = unwrap(engine.model).base_model.register_forward_pre_hook(lambda *_: calls.append(1))
    with engine.compute(train=True):
        for micro, real in du.pad_to_common_length([batch.select(r) for r in micro_rows]):
            m = micro.to(engine.device)
            inputs, share = forward_inputs(engine.model, m, engine.device, share_prompts=True, sync_ranks=True,
                                           pass_tokens=PASS_TOKENS)
            shared += share is not None
            logp, _ = response_logprobs(engine.model, inputs, m.responses, chunk_size=CHUNK, share=share)
            loss, _ = loss_fn(logp, m.old_logp, m.advantages, m.response_mask, cfg)
            weight = float(m.response_mask.sum()) / global_tokens if real else 0.0
            (loss * weight).backward()
            total += float(loss.detach()) * weight
    hook.remove()
    metrics = engine.step()
    metrics["loss"] = du.all_reduce_sum(total)
    metrics["shared"] = shared
    metrics["base_calls"] = len(calls)  # the base model's forwards: prompt pass, response passes (and fillers)
    return metrics


def greedy(model, engine_compute, processor, prompts: list[Prompt], device) -> list[list[int]]:
    """Greedy responses, one prompt per generate call (no padding, so both sides compute the same)."""
    rollout = HFRolloutEngine(model, pad_token_id(processor), eos_token_ids(model, processor), device=device,
                              compute=engine_compute, suppress_ids=placeholder_token_ids(model, processor))
    return [rollout.generate([p], GEN)[0].response_ids for p in prompts]


def greedy_logits(model, engine_compute, processor, prompt: Prompt, device) -> torch.Tensor:
    """Logits [steps, V] of a greedy `generate` (a stronger check than ids from a random tiny model)."""
    inputs = Batch.from_episodes([Episode(prompt=prompt)], pad_token_id(processor)).model_inputs(device)
    with engine_compute(train=False):
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=pad_token_id(processor),
                             temperature=None, top_p=None, top_k=None)
    return torch.stack(out.logits, 1)[0].float().cpu()


def all_sharded(model) -> bool:
    """Every parameter is back to its shard (nothing gathered is left behind to hold memory)."""
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def full_weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in engine.iter_full_state()}


def run_family(path: Path, out: Path) -> dict:
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    rank, world = du.rank(), du.world_size()
    vision = FAMILIES[path.name.rsplit("-", 1)[0]].vision
    model, processor = load(path)
    engine = FSDP2TrainEngine(model, **ENGINE_KW, device="cpu")
    full = make_batch(processor, vision)
    rows = du.shard_prompts(list(range(len(full))), rank, world)  # whole groups: rows 2r, 2r+1
    batch = full.select(rows)
    global_tokens = du.all_reduce_sum(batch.response_mask.sum())
    # Even steps: uneven counts (rank 1 gets a padding micro-batch) and rank 0's single rows cannot share, so
    # no rank shares. Odd steps: every rank's micro-batch is its whole group, and all share.
    uneven = [[0], [1]] if rank == 0 else [[0, 1]]
    micro_rows = lambda step: uneven if step % 2 == 0 else [[0, 1]]  # noqa: E731
    prompts = du.shard_prompts([full.prompts[0], full.prompts[2]], rank, world)

    res: dict = {"generated_before": du.gather_objects(greedy(engine.model, engine.generation, processor, prompts,
                                                              engine.device)),
                 "logits_before": du.gather_objects(greedy_logits(engine.model, engine.generation, processor,
                                                                  prompts[0], engine.device))}
    res["sharded_after"] = {"generation": all_sharded(engine.model)}
    batch.old_logp = old_logprobs(engine, batch)
    res["sharded_after"]["logprobs"] = all_sharded(engine.model)
    res["old_logp"] = du.gather_objects(batch.old_logp)
    res["metrics"] = []
    ckpt = out / f"dcp-{path.name}"
    for step in range(STEPS):
        if step == SAVE_AFTER:
            engine.save(ckpt)
            greedy(engine.model, engine.generation, processor, prompts, engine.device)  # must not disturb training
        res["metrics"].append(train_step(engine, batch, micro_rows(step), global_tokens))
    res["sharded_after"]["training"] = all_sharded(engine.model)
    res["weights"] = full_weights(engine)
    engine.export_hf(out / f"hf-{path.name}", processor)

    # Resume: a fresh model and engine load the checkpoint and replay the remaining steps.
    model2, _ = load(path)
    engine2 = FSDP2TrainEngine(model2, **ENGINE_KW, device="cpu")
    engine2.load(ckpt)
    res["resumed_metrics"] = [train_step(engine2, batch, micro_rows(step), global_tokens)
                              for step in range(SAVE_AFTER, STEPS)]
    res["resumed_weights"] = full_weights(engine2)
    res["resumed_lr"] = engine2.scheduler.get_last_lr()[0]
    res["lr"] = engine.scheduler.get_last_lr()[0]
    return res


def check_helpers() -> dict:
    r = du.rank()
    return {"mean": du.all_reduce_mean({"x": float(r), f"r{r}": 10.0 + r}),
            "reduced": du.reduce_metrics({"t": r + 1.0, "m": float(r), "a": 2.0 + r, f"r{r}": 5.0},
                                         {"t": "sum", "m": "max", "r0": "sum"}),
            "pad": du.pad_to_common_length(list(range(r + 1))), "sum": du.all_reduce_sum(r + 1),
            "max": du.all_reduce_max(r), "bcast": du.broadcast_object(f"from{r}"),
            "gathered": du.gather_objects(list(range(r + 1)))}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)  # two ranks on two cores
    du.init_distributed()
    try:
        results = {"helpers": check_helpers()}
        for spec in sys.argv[2:]:
            family, path = spec.split("=", 1)
            results[family] = run_family(Path(path), out)
        if du.is_main():
            torch.save(results, out / "results.pt")
        du.barrier()
    finally:
        du.destroy_distributed()


if __name__ == "__main__":
    main()
