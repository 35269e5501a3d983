"""A learned reward model: an HF sequence classifier with one output scores (prompt, response).

`reward.model` names its folder (`AutoModelForSequenceClassification`, one label, as TRL's and
OpenRLHF's reward models are saved). Each response is written as the reward model's own chat:
the prompt's rendered user message (`data.template`, image and video markers removed: the
reward model reads text) and the response as the assistant turn. Without a chat template it
reads `prompt + "\n" + response`. Inputs longer than `reward.model_max_length` lose tokens from
the left, so the response's end, which the classifier reads, is always kept.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from rllava.config import ConfigError, MissingFileError, RewardConfig
from rllava.models.load import resolve_dtype

MEDIA_MARKERS = ("<image>", "<video>")


def check_reward_model_path(path: str) -> None:
    """`reward.model` must be a local model folder (read before the reward model loads, and by `rllava check`)."""
    if not Path(path).is_dir():
        raise MissingFileError(f"reward.model={path!r}: no such model folder")


class RewardModel:
    def __init__(self, cfg: RewardConfig, device: torch.device | str, dtype: str = "float32"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_reward_model_path(cfg.model)
        self.device = torch.device(device)
        self.batch_size = cfg.model_batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = cfg.model_max_length
        self.model = AutoModelForSequenceClassification.from_pretrained(cfg.model, dtype=resolve_dtype(dtype)).to(self.device)
        if self.model.config.num_labels != 1:
            raise ConfigError(f"reward.model={cfg.model!r} has {self.model.config.num_labels} labels; a reward "
                                   "model has one (its score)")
        if self.model.config.pad_token_id is None:  # the classifier finds each row's last token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False).eval()

    def text(self, query: str, response: str) -> str:
        """The reward model's input for one (prompt, response)."""
        for marker in MEDIA_MARKERS:
            query = query.replace(marker, "")
        query = query.strip()
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query}, {"role": "assistant", "content": response}], tokenize=False)
        return f"{query}\n{response}"

    @torch.no_grad()
    def score(self, queries: list[str], responses: list[str]) -> list[float]:
        """One score per (prompt, response); a non-finite score comes back as NaN for the caller to count."""
        texts = [self.text(q, r) for q, r in zip(queries, responses)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length,
                                 add_special_tokens=not self.tokenizer.chat_template).to(self.device)  # a template has its own
            logits = self.model(**enc).logits[:, 0].float().cpu()
            out += [v if math.isfinite(v) else math.nan for v in logits.tolist()]
        return out
