"""Supervised fine-tuning on the same actor: the target response is rendered from the row (NLL on mask-1 tokens)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2

from rllava.data.rows import DataError
from rllava.data.types import Batch, Episode, Prompt
from rllava.pipelines.registry import PIPELINES
from rllava.roles.multiturn import turn_end_id


def _no_null(value):
    """jinja's `finalize`: a null field (a JSON null, a missing parquet value) must not render as the text "None"."""
    if value is None:
        raise jinja2.TemplateRuntimeError("a field it prints is null")
    return value


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, finalize=_no_null).from_string(template)


def render_response(template: str, meta: dict, where: str) -> str:
    """The row's target response (`data.response_template` rendered with its fields); `where` names the row. A
    row without a field the template names, with a null one, or whose response is blank is an error: it would
    train the model to answer "None", or nothing."""
    def fail(why: str) -> DataError:
        return DataError(f"{where}, field 'data.response_template': {template!r}: {why} "
                         f"(row fields: {sorted(k for k in meta if k != 'index')})")

    try:
        text = _compiled(template).render(**meta)
    except jinja2.TemplateError as e:
        raise fail(str(e)) from None
    if not text.strip():
        raise fail("renders to empty text")
    return text


def demo_end_id(ctx) -> int:
    """The token a run's demonstrations end their turns with: see `turn_end_id`."""
    return turn_end_id(ctx.processor, ctx.extra["eos_ids"])


def sft_episodes(prompts: list[Prompt], tokenizer, template: str, eos_id: int) -> list[Episode]:
    """Teacher-forced episodes: response = tokens of `template` rendered with the row, then EOS."""
    episodes = []
    for i, p in enumerate(prompts):
        text = render_response(template, p.meta, p.where or f"dataset row {p.index}")  # no where: a hand-made Prompt
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]
        episodes.append(Episode(prompt=p, response_ids=ids, response_mask=[1] * len(ids), response_text=text, group_id=i))
    return episodes


# supervised=True: the step needs no reference model or critic.
@PIPELINES.register("sft", description="supervised fine-tuning (NLL on the rendered answer), same actor and loop",
                    supervised=True)
class SFTPipeline:
    def __init__(self, cfg):
        self.cfg = cfg

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def demonstration_check(self) -> Callable[[dict, str], Any] | None:
        """fn(row fields, where) that raises on a row whose demonstration cannot be read; None without demonstrations."""
        return lambda meta, where: render_response(self.cfg.data.response_template, meta, where)

    def collect(self, trainer, prompts) -> tuple[list[Episode], dict[str, float]]:
        """The target episodes of a prompt batch (a multi-turn SFT pipeline overrides this)."""
        ctx = trainer.ctx
        return sft_episodes(prompts, ctx.tokenizer, self.cfg.data.response_template, demo_end_id(ctx)), {}

    def train_step(self, trainer, prompts) -> dict[str, float]:
        ctx = trainer.ctx
        episodes, metrics = self.collect(trainer, prompts)
        batch = Batch.from_episodes(episodes, ctx.pad_id)
        metrics.update(ctx.actor.update(batch, loss_name="sft", seed=self.cfg.trainer.seed + trainer.step))
        metrics["response/tokens"] = float(batch.response_mask.sum())
        return metrics
