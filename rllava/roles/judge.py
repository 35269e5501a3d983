"""A judge: a language model asked about each response, whose one-token verdict is the reward.

`reward.model` names its folder (a causal or image-text LM: `reward.model_type=judge`, or derived
from the folder's architecture). Each response becomes the judge's user message: `reward.judge_template`
rendered with `prompt` (the policy's rendered user message, image and video markers removed),
`response` and the row's fields (`answer`, ...), under the judge's chat template with its
generation prompt (plain text where it has none). A vision-language judge also sees the prompt's
images, ahead of that text, through its own processor (`reward.judge_images=false` keeps it to text). The judge is not sampled: one forward reads
its next-token probabilities of the verdicts in `reward.judge_labels`, each one token, and the reward
is their expected score with the probabilities renormalised over the verdicts. How much probability
the verdicts held is logged (`reward/judge_label_mass`); a judge that does not answer in that form
shows a low mass. A text-only input longer than `reward.model_max_length` loses tokens from the left,
so the template's closing question and the generation prompt are always read (whatever else its batch
holds); one with images is read whole, since its image tokens must stay whole. The response is the
policy's text: its special-token strings (`<|im_end|>`, ...) are broken up, so it cannot close the
judge's user turn and forge the judge's answer.
"""
from __future__ import annotations

import math
from typing import Any

import jinja2
import torch

from rllava.config import ConfigError, ModelConfig, RewardConfig
from rllava.data.rows import DataError
from rllava.data.template import TemplateError, apply_chat_template, build_messages, read_text_or_file
from rllava.roles.reward_model import (
    check_reward_model_path,
    escape_special_tokens,
    remove_media_markers,
    special_token_pattern,
)


class JudgeTemplate:
    """`reward.judge_template`: jinja over the row's fields, `prompt` and `response`."""

    def __init__(self, spec: str):
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        try:
            self._tmpl = env.from_string(read_text_or_file(spec, "reward.judge_template"))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"reward.judge_template: jinja syntax error on line {e.lineno}: {e.message}") from None

    def render(self, query: str, response: str, meta: dict[str, Any]) -> str:
        """The judge's message, with no image or video markers left (a judge that sees images gets them first)."""
        try:
            text = self._tmpl.render({**meta, "prompt": query.strip(), "response": response})
        except jinja2.UndefinedError as e:
            raise DataError(f"reward.judge_template: dataset row {meta.get('index', '?')} has no such field "
                            f"({e.message})") from None
        return remove_media_markers(text)  # the prompt's, and any a response writes


def label_token_ids(tokenizer: Any, labels: dict[str, float], where: str) -> list[int]:
    """The token id of each verdict, as the judge would write it at the start of its turn."""
    ids = []
    for label in labels:
        tokens = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ConfigError(f"reward.judge_labels: {label!r} is {len(tokens)} tokens for {where}'s tokenizer; "
                              "each verdict must be one token")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ConfigError(f"reward.judge_labels: {list(labels)} share a token for {where}'s tokenizer")
    return ids


class JudgeModel:
    def __init__(self, cfg: RewardConfig, device: torch.device | str, dtype: str = "float32"):
        from rllava.models.introspect import get_tokenizer, is_vlm
        from rllava.models.load import load_model, load_processor

        check_reward_model_path(cfg.model)
        self.device = torch.device(device)
        self.batch_size = cfg.model_batch_size
        self.max_length = cfg.model_max_length
        self.model = load_model(ModelConfig(path=cfg.model, dtype=dtype), self.device).requires_grad_(False).eval()
        self.multimodal = is_vlm(self.model)
        self.processor = load_processor(cfg.model, self.multimodal)
        self.tokenizer = get_tokenizer(self.processor)
        self.tokenizer.padding_side = "left"  # the verdict is read after each row's last token
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.template = JudgeTemplate(cfg.judge_template)
        self.label_ids = label_token_ids(self.tokenizer, cfg.judge_labels, f"reward.model={cfg.model!r}")
        self.label_scores = torch.tensor(list(cfg.judge_labels.values()), dtype=torch.float32)
        self.special_tokens = special_token_pattern(self.tokenizer)
        self.has_chat_template = bool(getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template)
        self.sees_images = self.multimodal and cfg.judge_images
        self.metrics: dict[str, float] = {}

    def text(self, query: str, response: str, meta: dict[str, Any], n_images: int = 0) -> str:
        """The judge's input for one response (and its `n_images` images), up to where its verdict starts."""
        # Markers out first: removing one later could join the pieces of a broken-up special-token string.
        response = escape_special_tokens(remove_media_markers(response), self.special_tokens)
        message = self.template.render(query, response, meta)
        if not self.has_chat_template:
            return message + "\n"
        messages = build_messages(message, n_images, multimodal=self.multimodal)  # unmarked images go first
        # A hybrid-thinking judge (Qwen3) opens its turn with "<think>", where no verdict is: told not to think, its
        # template closes an empty think block, so the next token is the verdict (other templates ignore the flag).
        return apply_chat_template(self.processor, messages, enable_thinking=False)

    def _encode(self, texts: list[str], images: list[list[Any]]) -> dict[str, torch.Tensor]:
        """Left-padded judge inputs for a batch of text-only rows (the tokenizer's, cut to model_max_length) or of
        rows with images (the processor's, whole: image tokens must stay whole)."""
        kw = dict(return_tensors="pt", padding=True, add_special_tokens=not self.has_chat_template)
        if not any(images):
            return dict(self.tokenizer(texts, truncation=True, max_length=self.max_length, **kw))
        return dict(self.processor(text=texts, images=images, padding_side="left", **kw))

    @torch.no_grad()
    def score(self, queries: list[str], responses: list[str], metas: list[dict[str, Any]],
              images: list[list[Any]] | None = None) -> list[float]:
        """One expected verdict score per response (`images`: each prompt's, for a judge that sees them); a
        non-finite one comes back as NaN for the caller to count."""
        from rllava.models.logprobs import next_token_logprobs

        images = [list(x) for x in images] if images is not None and self.sees_images else [[] for _ in queries]
        texts = [self.text(q, r, m, len(x)) for q, r, m, x in zip(queries, responses, metas, images)]
        out = [math.nan] * len(texts)
        mass = 0.0
        # Text-only rows and rows with images are batched apart: only the former are cut to model_max_length, and
        # a row must be cut (or not) whatever its batch holds.
        for rows in ([i for i, x in enumerate(images) if not x], [i for i, x in enumerate(images) if x]):
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                enc = self._encode([texts[i] for i in batch], [images[i] for i in batch])
                inputs = {k: v.to(self.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
                logp = next_token_logprobs(self.model, inputs, self.label_ids).cpu()
                mass += float(logp.exp().sum())
                scores = torch.softmax(logp, -1) @ self.label_scores
                for i, v in zip(batch, scores.tolist()):
                    out[i] = v if math.isfinite(v) else math.nan
        self.metrics = {"reward/judge_label_mass": mass / max(1, len(texts))}
        return out
