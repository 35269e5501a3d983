"""The rollout role: sampling settings, the engine, and decoding of responses to text."""
from __future__ import annotations

from rllava.config import RolloutConfig
from rllava.data.types import Episode, Prompt
from rllava.engines.hf_rollout import Sampling


class Rollout:
    def __init__(self, engine, tokenizer, cfg: RolloutConfig):
        self.engine = engine
        self.tokenizer = tokenizer
        self.cfg = cfg

    def train_sampling(self, n: int | None = None) -> Sampling:
        c = self.cfg
        return Sampling(n=c.n if n is None else n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                        max_new_tokens=c.max_new_tokens)

    def val_sampling(self) -> Sampling:
        c = self.cfg
        return Sampling(n=c.val_n, temperature=c.val_temperature, top_p=1.0, top_k=0, max_new_tokens=c.max_new_tokens)

    def greedy_sampling(self) -> Sampling:
        return Sampling(n=1, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        self.engine.wake()
        episodes = self.engine.generate(prompts, sampling, group_offset=group_offset)
        self.engine.sleep()
        texts = self.tokenizer.batch_decode([e.response_ids for e in episodes], skip_special_tokens=True)
        for e, t in zip(episodes, texts):
            e.response_text = t
        return episodes
