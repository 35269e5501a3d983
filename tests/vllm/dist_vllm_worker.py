"""One torchrun rank: an FSDP2-sharded policy, a vLLM engine per rank, weights synced from the shards.

Run by test_vllm_distributed.py as `torchrun --nproc_per_node=2 dist_vllm_worker.py MODEL_DIR OUT_DIR`.
Each rank writes OUT_DIR/rank{r}.json with its vLLM and HF greedy answers for its share of the prompts.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

PROMPTS = [[5, 6, 7, 8, 9], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36], [40, 41]]


def main(model_dir: str, out_dir: str) -> None:
    from rllava.config import ModelConfig
    from rllava.data.types import Batch, Prompt
    from rllava.engines import distributed as du
    from rllava.engines.fsdp2 import FSDP2TrainEngine
    from rllava.engines.hf_rollout import HFRolloutEngine, Sampling
    from rllava.engines.vllm_rollout import VLLMRolloutEngine
    from rllava.models.load import eos_token_ids, load_model_and_processor, pad_token_id
    from rllava.models.logprobs import response_logprobs

    du.init_distributed()
    rank, world = du.rank(), du.world_size()
    model, tok = load_model_and_processor(ModelConfig(path=model_dir))
    model.eval()
    with torch.no_grad():  # "trained" weights, the same on every rank, unlike the folder vLLM starts from
        gen = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std().clamp(min=0.1))
    reference = copy.deepcopy(model)
    FSDP2TrainEngine(model, lr=1e-3)  # shards `model` in place: its parameters become DTensors
    pad, eos = pad_token_id(tok), eos_token_ids(reference, tok)
    engine = VLLMRolloutEngine(model, pad_id=pad, eos_ids=eos, model_path=model_dir, dtype="float32",
                               enforce_eager=True, max_model_len=128, seed=0)
    mine = [Prompt(input_ids=ids, index=i) for i, ids in enumerate(PROMPTS)][rank::world]
    sampling = Sampling(temperature=0.0, max_new_tokens=10)
    engine.wake()  # gathers every shard (a collective) and loads the full weights into this rank's vLLM
    ours = engine.generate(mine, sampling)
    ref = HFRolloutEngine(reference, pad_id=pad, eos_ids=eos).generate(mine, sampling)
    batch = Batch.from_episodes(ours, pad)
    with torch.no_grad():
        logp, _ = response_logprobs(reference, batch.model_inputs(), batch.responses)
    diff = max(abs(a - b) for i, e in enumerate(ours) for a, b in zip(e.rollout_logp, logp[i].tolist()))
    result = {"rank": rank, "ours": [e.response_ids for e in ours], "ref": [e.response_ids for e in ref],
              "indices": [p.index for p in mine], "logp_max_diff": diff,
              "backend": engine.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    engine.close()  # also leaves the process group (vLLM's teardown destroys it)
    assert not du.is_initialized()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
