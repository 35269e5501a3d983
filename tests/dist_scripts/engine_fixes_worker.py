"""torchrun entry for tests/test_engine_fixes.py: two FSDP2 scenarios on 2 ranks (gloo, CPU).

`torchrun --nproc_per_node=2 engine_fixes_worker.py OUT MODEL_PATH VLM_PATH` writes what rank 0 saw to OUT/results.pt:
- "fresh": a checkpoint saved before the first optimizer step must not change the training that follows;
- "uneven": an actor update with 2 rows on rank 0 and 6 on rank 1 takes as many optimizer steps on each rank
  as the global row count asks for;
- "critic_head": a critic checkpoint written with the (never trained) LM head resumes into a critic without it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rllava.config import Config
from rllava.data.types import Batch, Episode, Prompt
from rllava.engines import distributed as du

ENGINE_KW = dict(lr=1e-3, weight_decay=0.1, max_grad_norm=1.0)
RANK_ROWS = [[0, 1], [2, 3, 4, 5, 6, 7]]  # uneven on purpose (as group filters leave them)


def make_batch() -> Batch:
    """8 rows of different response lengths with fixed random advantages."""
    gen = torch.Generator().manual_seed(0)
    eps = []
    for row in range(8):
        n = 2 + row % 4
        ids = torch.randint(300, 900, (n,), generator=gen).tolist()
        eps.append(Episode(prompt=Prompt(input_ids=[11, 12, 13 + row % 2]), response_ids=ids, response_mask=[1] * n,
                           group_id=row // 2))
    batch = Batch.from_episodes(eps, 0)
    batch.advantages = torch.randn(batch.responses.shape, generator=gen) * batch.response_mask
    return batch


def actor_config(path: str, mini_batch_size: int) -> Config:
    cfg = Config()
    cfg.model.path, cfg.actor.mini_batch_size, cfg.actor.ppo_epochs = path, mini_batch_size, 1
    return cfg


def count_steps(engine) -> list[int]:
    """Counts the engine's optimizer steps in the returned list's only element."""
    count, step = [0], engine.step

    def counted():
        count[0] += 1
        return step()

    engine.step = counted
    return count


def full_weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in engine.iter_full_state()}


def lm_steps(engine, n: int) -> None:
    """`n` optimizer steps of a plain LM loss on fixed per-rank tokens."""
    ids = torch.randint(300, 900, (2, 9), generator=torch.Generator().manual_seed(du.rank()))
    for _ in range(n):
        with engine.compute(train=True):
            engine.model(input_ids=ids, labels=ids).loss.backward()
        engine.step()


def fresh_checkpoint(path: str, out: Path) -> dict:
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    def engine():
        return FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(path), **ENGINE_KW, device="cpu")

    saved, plain, resumed = engine(), engine(), engine()
    ckpt = out / "fresh-dcp"
    saved.save(ckpt)  # before any step
    res = {"state_after_save": len(saved.optimizer.state)}
    resumed.load(ckpt)
    res["state_after_load"] = len(resumed.optimizer.state)
    for e in (saved, plain, resumed):
        lm_steps(e, 2)
    res.update(saved=full_weights(saved), plain=full_weights(plain), resumed=full_weights(resumed))
    return res


def weights(engine) -> dict[str, torch.Tensor]:
    """Full weights of either engine (FSDP2 gathers its shards)."""
    if hasattr(engine, "iter_full_state"):
        return full_weights(engine)
    return {k: v.detach().cpu().clone() for k, v in engine.model_state_dict().items()}


def value_steps(engine, n: int, touch_head: bool = False) -> None:
    """`n` optimizer steps regressing the values of fixed per-rank tokens toward 1. `touch_head` puts the
    backbone's LM head into the loss with weight 0: a gradient (of zeros), so the optimizer keeps state for it."""
    ids = torch.randint(300, 900, (2, 9), generator=torch.Generator().manual_seed(du.rank()))
    for _ in range(n):
        with engine.compute(train=True):
            v = engine.model({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 4)
            loss = ((v - 1.0) ** 2).mean()
            if touch_head:
                loss = loss + 0.0 * engine.model.backbone.lm_head.weight.sum()
            loss.backward()
        engine.step()


def critic_head(make_engine, vlm_path: str, ckpt: Path) -> dict:
    """A critic trained 2 steps with its LM head still in place (as rllava built it before dropping the head)
    and saved; a critic built without the head loads that checkpoint; both take one more step."""
    from transformers import AutoModelForImageTextToText

    from rllava.roles.critic import ValueModel, drop_lm_head, hidden_size_of

    def value_model(drop: bool) -> tuple[ValueModel, int]:
        backbone = AutoModelForImageTextToText.from_pretrained(vlm_path)
        freed = drop_lm_head(backbone) if drop else 0
        return ValueModel(backbone, hidden_size_of(backbone)), freed

    old = make_engine(value_model(False)[0])
    value_steps(old, 2)
    old.save(ckpt)
    model, freed = value_model(True)
    new = make_engine(model)
    new.load(ckpt)
    value_steps(old, 1)
    value_steps(new, 1)
    return {"freed": freed, "old": {k: v for k, v in weights(old).items() if "lm_head" not in k},
            "new": weights(new)}


def uneven_rows(path: str) -> dict:
    from rllava.engines.fsdp2 import FSDP2TrainEngine
    from rllava.roles.actor import Actor

    res = {}
    for size in (8, 2):  # one global mini-batch; four, two of them empty on rank 0
        engine = FSDP2TrainEngine(AutoModelForCausalLM.from_pretrained(path), **ENGINE_KW, device="cpu")
        steps = count_steps(engine)
        actor = Actor(engine, actor_config(path, size))
        actor.update(make_batch().select(RANK_ROWS[du.rank()]))
        res[size] = {"steps": du.gather_objects(steps[0]), "weights": full_weights(engine)}
    return res


def main() -> None:
    from rllava.engines.fsdp2 import FSDP2TrainEngine

    out, path, vlm_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)  # two ranks on two cores
    du.init_distributed()
    try:
        results = {"fresh": fresh_checkpoint(path, out), "uneven": uneven_rows(path),
                   "critic_head": critic_head(lambda m: FSDP2TrainEngine(m, **ENGINE_KW, device="cpu"), vlm_path,
                                              out / "critic-dcp")}
        if du.is_main():
            torch.save(results, out / "results.pt")
        du.barrier()
    finally:
        du.destroy_distributed()


if __name__ == "__main__":
    main()
