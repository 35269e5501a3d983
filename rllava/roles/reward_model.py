"""A learned reward model: an HF sequence classifier with one output scores (prompt, response).

(`reward.model` can also be an LM asked for a verdict: `rllava.roles.judge`; `load_reward_model`
picks the kind.)

`reward.model` names its folder (`AutoModelForSequenceClassification`, one label, as TRL's and
OpenRLHF's reward models are saved). Each response is written as the reward model's own chat:
the prompt's rendered user message (`data.template`, image and video markers removed: the
reward model reads text) and the response as the assistant turn. Without a chat template it
reads `prompt + "\n" + response`. Inputs longer than `reward.model_max_length` lose tokens from
the left, so the response's end, which the classifier reads, is always kept. The response is the
policy's text: a special-token string written in it (`<|im_end|>`, ...) is broken up
(`escape_special_tokens`), so it reads as text and cannot close its turn or forge another one.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from rllava.config import ConfigError, MissingFileError, RewardConfig
from rllava.models.load import resolve_dtype

MEDIA_MARKERS = ("<image>", "<video>")
ESCAPE = "\u200b"  # zero-width space: what breaks up a special-token string in policy text

logger = logging.getLogger(__name__)


def remove_media_markers(text: str) -> str:
    """`text` with no image or video marker left (repeated: removing "<image>" from "<ima<image>ge>" leaves one)."""
    while any(marker in text for marker in MEDIA_MARKERS):
        for marker in MEDIA_MARKERS:
            text = text.replace(marker, "")
    return text


def special_token_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex of the strings `tokenizer` reads as special (control) tokens, longest first; None if it has none.
    (One-character ones are left out: a zero-width space cannot split them.)"""
    names = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    names |= set(tokenizer.all_special_tokens)
    names = sorted((n for n in names if len(n) > 1 and ESCAPE not in n), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def escape_special_tokens(text: str, pattern: re.Pattern[str] | None) -> str:
    """Untrusted (policy-written) `text` in which no special-token string of `pattern` is left whole.

    The policy can spell "<|im_end|>" with ordinary tokens, and decoding keeps that text; a reward model's
    tokenizer would read it as the control token and let the response end its turn and forge the next one. A
    zero-width space after each such string's first character makes it tokenize as the plain text it is, and
    text without one (every honest response) is returned unchanged, so its tokens are too."""
    if pattern is None:
        return text
    while pattern.search(text):  # breaking one match can leave an overlapping one whole
        text = pattern.sub(lambda m: m[0][0] + ESCAPE + m[0][1:], text)
    return text


def check_reward_model_path(path: str) -> None:
    """`reward.model` must be a local model folder (read before the reward model loads, and by `rllava check`)."""
    if not Path(path).is_dir():
        raise MissingFileError(f"reward.model={path!r}: no such model folder")


def reward_model_type(cfg: RewardConfig) -> str:
    """`reward.model_type`, or the kind its folder's architecture says: a sequence classifier or an LM judge."""
    check_reward_model_path(cfg.model)
    try:
        archs = json.loads((Path(cfg.model) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        archs = []
    classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if cfg.model_type == "classifier" and archs and not classifier:
        raise ConfigError(f"reward.model={cfg.model!r} is a {archs[0]}, not a sequence classifier: its score head "
                          "would be random. Set reward.model_type=judge to ask it for a verdict instead")
    if cfg.model_type == "judge" and classifier:  # its LM head was dropped for the score head: a random one reads
        raise ConfigError(f"reward.model={cfg.model!r} is a {archs[0]}, whose LM head was replaced by a score head: "
                          "as a judge its verdicts would be random. Set reward.model_type=classifier")
    if cfg.model_type:
        return cfg.model_type
    if classifier:
        return "classifier"
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs):
        return "judge"
    raise ConfigError(f"reward.model={cfg.model!r}: cannot tell its kind from config.json (architectures {archs}); "
                      "set reward.model_type=classifier or judge")


def load_reward_model(cfg: RewardConfig, device: torch.device | str, dtype: str = "float32") -> Any:
    """The reward model `cfg.model` names, as a classifier or a judge; both have `score(queries, responses, metas)`."""
    from rllava.roles.judge import JudgeModel

    return {"classifier": RewardModel, "judge": JudgeModel}[reward_model_type(cfg)](cfg, device, dtype)


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
        # The classifier reads each row at its last token that is not config.pad_token_id; rows are right-padded
        # with the tokenizer's pad, so the two must agree or a shorter row is read at a padding position.
        text_config = self.model.config.get_text_config()
        if text_config.pad_token_id not in (None, self.tokenizer.pad_token_id):
            logger.warning("reward.model=%r: config.pad_token_id %s is not its tokenizer's pad id %s; using the "
                           "tokenizer's", cfg.model, text_config.pad_token_id, self.tokenizer.pad_token_id)
        text_config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False).eval()
        self.special_tokens = special_token_pattern(self.tokenizer)

    def text(self, query: str, response: str) -> str:
        """The reward model's input for one (prompt, response); the response's special-token strings are broken up."""
        query = remove_media_markers(query).strip()
        response = escape_special_tokens(response, self.special_tokens)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query}, {"role": "assistant", "content": response}], tokenize=False)
        return f"{query}\n{response}"

    @torch.no_grad()
    def score(self, queries: list[str], responses: list[str], metas: list[dict[str, Any]] | None = None,
              images: list[list[Any]] | None = None) -> list[float]:
        """One score per (prompt, response); a non-finite score comes back as NaN for the caller to count.
        (`metas` and `images`, the rows' fields and images, are for judges; a classifier reads the text alone.)"""
        texts = [self.text(q, r) for q, r in zip(queries, responses)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length,
                                 add_special_tokens=not self.tokenizer.chat_template).to(self.device)  # a template has its own
            logits = self.model(**enc).logits[:, 0].float().cpu()
            out += [v if math.isfinite(v) else math.nan for v in logits.tolist()]
        return out
