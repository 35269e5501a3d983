"""Multi-turn rollout: the policy acts, an environment answers, until an answer or a limit.

Episodes are built at the token level so training sees exactly what was generated:
`response_ids` = turn 1 tokens | observation tokens | turn 2 tokens | ..., with
`response_mask` 1 on generated tokens and 0 on observation tokens. Observation turns are
rendered with the processor's chat template (the suffix that a new message adds) and their
images are processed once and kept in `Episode.extra_mm`, with their per-token extras
(e.g. Qwen's `mm_token_type_ids`) in `Episode.response_seq`, so a single forward pass over
the whole episode reproduces the positions used during generation (M-RoPE included). A prompt may carry
a UFT hint (`HINT_KEY`): the demonstration turns an episode starts from instead of the policy's.
`max_total_tokens` bounds `response_ids`: a turn that would pass it is cut (stop "budget"), and an
observation that would leave no room for another turn ends the episode before it is appended. A turn that did not
finish (cut by max_new_tokens or the budget) ends the episode unstepped: the environment never reads it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rllava.data.types import Episode, Prompt, concat_mm
from rllava.data.vision import load_image
from rllava.engines import distributed as du
from rllava.engines.hf_rollout import Sampling
from rllava.models.introspect import get_tokenizer

# The context prompt's meta says which policy turn comes next (0 first), for engines that play scripted
# turns (demonstrations); row fields are kept alongside.
TURN_KEY = "turn_index"
# A prompt's meta may hold a UFT hint: the demonstration's first turns as [(token ids, whole turn?)]. The
# episode plays them instead of the policy; a partial last one is a start the policy continues.
HINT_KEY = "hint_turns"

_PROBE = [{"role": "user", "content": [{"type": "text", "text": "probe"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "probe"}]}]


def _text_only(messages: list[dict]) -> list[dict]:
    return [{**m, "content": "".join(p.get("text", "") for p in m["content"])} for m in messages]


def ran_a_tool(info: dict) -> bool:
    """Whether a step's `info` reports a tool call that ran and returned (not one that failed, or was skipped
    because the turns ran out): what `agent/tool_calls` counts."""
    return info.get("action") == "tool" and "error" not in info and not info.get("tool_skipped")


def _end(ep: Episode, env: Any, finished: bool, stop: str, format_ok: bool = True) -> None:
    """Close an episode: whether it ended by itself, why it stopped, and whether its format held (never for an
    episode whose last turn was cut off: `format_ok=False`)."""
    ep.finished = finished
    ep.info["stop"] = stop
    ep.info["format_ok"] = format_ok and env.outcome().format_ok


class ObservationRenderer:
    """Turns an environment observation into tokens (and image inputs) that continue a conversation.

    `role="raw"` continues the assistant's own turn with the text (Search-R1's `<information>` blocks):
    no chat markers, no EOS before it; text only. `template` shapes the text in every role."""

    def __init__(self, processor: Any, role: str = "user", multimodal: bool = True, template: str = "{text}"):
        self.processor = processor
        self.tokenizer = get_tokenizer(processor)
        self.role = role
        self.multimodal = multimodal
        self.template = template
        self._close: tuple[int | None, str] | None = None  # turn_close(), read off the template once
        self._close_text = ""  # all the template writes after an assistant's text (e.g. "<|im_end|>\n")

    @property
    def raw(self) -> bool:
        return self.role == "raw"

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        msgs = messages if self.multimodal else _text_only(messages)
        return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    def render(self, text: str, n_images: int) -> str:
        """The string between the end of an assistant turn (its EOS) and the next assistant turn's first token."""
        text = self.template.format(text=text)
        if self.raw:
            if n_images:
                raise ValueError("env.observation_role=raw continues the assistant's text: it cannot show images")
            return text
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        after = self._render(_PROBE + [{"role": self.role, "content": content}], True)
        # Only what follows the probe's assistant text is compared, not the whole prefix: a template may re-render
        # earlier turns once a message follows them (Qwen3 drops their <think> block). The probe's assistant text
        # is the last "probe" of the conversation without the observation, so the same occurrence here.
        at = -1
        for _ in range(self._render(_PROBE, False).count("probe")):
            at = after.find("probe", at + 1)
        suffix = after[at + len("probe"):]
        _, rest = self.turn_close()
        head = self._close_text[:len(self._close_text) - len(rest)]  # the turn-close token's text, which the policy wrote
        if not suffix.startswith(head):
            raise ValueError("the chat template closes an assistant turn differently once a message follows it; "
                             "multi-turn episodes need the same turn close in both")
        return suffix[len(head):]

    def turn_close(self) -> tuple[int | None, str]:
        """(the token that ends an assistant turn in the chat template, the text the template writes after it).

        Read off the template, not the tokenizer's eos: Gemma 3's turns end with `<end_of_turn>` and a newline
        while its eos is `<eos>`; Qwen's with `<|im_end|>` and a newline. (None, "") when the template writes
        nothing after the assistant's text."""
        if self._close is None:
            before = self._render(_PROBE, False)
            close = self._close_text = before[before.rfind("probe") + len("probe"):]  # e.g. "<|im_end|>\n"
            ids = self.tokenizer(close, add_special_tokens=False)["input_ids"] if close else []
            first = self.tokenizer.decode(ids[:1]) if ids else ""
            self._close = (ids[0], close[len(first):]) if ids and close.startswith(first) else (None, "")
        return self._close

    def encode(self, text: str, images: list) -> tuple[list[int], dict[str, Any], dict[str, list[int]]]:
        """(token ids, image tensors, per-token extras) of one observation turn."""
        rendered = self.render(text, len(images))
        if not images:
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"], {}, {}
        # no BOS: the observation continues the episode (a BOS-adding tokenizer would put one mid-sequence)
        out = self.processor(text=[rendered], images=images, return_tensors="pt", add_special_tokens=False)
        ids = out["input_ids"][0].tolist()
        seq = {k: v[0].tolist() for k, v in out.items() if k not in ("input_ids", "attention_mask")
               and hasattr(v, "dim") and v.dim() == 2 and v.shape[1] == len(ids) and v.shape[0] == 1}
        mm = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and k not in seq}
        return ids, mm, seq


def turn_end_id(processor: Any, eos_ids: list[int]) -> int:
    """The token that ends a demonstration's turn: the chat template's turn close where it is an eos id, so that
    demonstrations end as the policy's own turns do (a real Gemma 3 lists `<eos>` first but closes its turns with
    `<end_of_turn>`); else the first eos id."""
    end = ObservationRenderer(processor, multimodal=hasattr(processor, "image_processor")).turn_close()[0]
    return end if end in eos_ids else eos_ids[0]


class MultiTurnRollout:
    """Same interface as the `Rollout` role (generate + sampling presets); drives one environment per episode."""

    def __init__(self, rollout, make_env: Callable[[], Any], renderer: ObservationRenderer, max_total_tokens: int,
                 env_workers: int = 1, image_key: str = "images"):
        self.rollout = rollout  # the single-turn Rollout role: engine + tokenizer + sampling config
        self.make_env = make_env
        self.renderer = renderer
        self.max_total_tokens = max_total_tokens
        self.env_workers = env_workers  # environments stepped at once (threads): tool calls wait in parallel
        self.image_key = image_key  # the row field (data.image_key) holding the original images, which tools crop

    def __getattr__(self, name: str):  # train_sampling / val_sampling / greedy_sampling / cfg / tokenizer
        return getattr(self.rollout, name)

    @staticmethod
    def _context(ep: Episode) -> Prompt:
        """The conversation so far as a prompt for the next turn. Its chat text and raw images (what the vLLM engine
        reads for an image prompt) are the prompt's on the first turn only: later contexts hold more than them."""
        p = ep.prompt
        seq = {k: v + ep.response_seq.get(k, [0] * len(ep.response_ids)) for k, v in p.seq.items()}
        mm = concat_mm([d for d in [p.mm, *ep.extra_mm] if d]) if (p.mm or ep.extra_mm) else {}
        first = not ep.response_ids
        return Prompt(input_ids=p.input_ids + ep.response_ids, mm=mm, seq=seq, text=p.text if first else "",
                      images=list(p.images) if first else [], meta={**p.meta, TURN_KEY: ep.info["turns"]},
                      index=p.index, where=p.where)

    def _append(self, ep: Episode, ids: list[int], trained: bool, logp: list[float] | None = None,
                seq: dict[str, list[int]] | None = None) -> None:
        keys = set(ep.prompt.seq) | set(ep.response_seq) | set(seq or {})
        for k in keys:
            ep.response_seq.setdefault(k, [0] * len(ep.response_ids))
            ep.response_seq[k] += (seq or {}).get(k, [0] * len(ids))
        ep.response_ids += ids
        ep.response_mask += [int(trained)] * len(ids)
        if ep.rollout_logp is not None:
            if trained and logp is None:  # the engine recorded none (HF, unasked): the episode has none
                ep.rollout_logp = None
            else:
                ep.rollout_logp += logp if logp is not None else [0.0] * len(ids)

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        episodes = [Episode(prompt=p, group_id=group_offset + i, rollout_logp=[]) for i, p in enumerate(prompts)
                    for _ in range(sampling.n)]
        envs = []
        for ep in episodes:
            env = self.make_env()
            # full-resolution originals, for tools that crop them; the prompt's resized images only where the row
            # has none (a prompt built without a dataset row)
            images = [load_image(x) for x in ep.prompt.meta.get(self.image_key) or []] or list(ep.prompt.images)
            env.reset(ep.prompt.meta, images)
            envs.append(env)
            ep.info = {"turns": 0, "tool_calls": 0, "transcript": []}
        turn_sampling = Sampling(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                 max_new_tokens=sampling.max_new_tokens, logprobs=sampling.logprobs)
        engine = self.rollout.engine
        engine.wake()  # a vLLM engine sleeps outside rollouts
        try:
            active = list(range(len(episodes)))
            # Ranks step in lock-step: every rank makes one `generate` call per turn until the episodes of
            # all ranks are done (a sharded model's generate is a collective). An idle rank generates for
            # a copy of its first episode and drops the result.
            while du.all_reduce_max(len(active)) > 0:
                turns = self._turns([episodes[i] for i in active], episodes[0], turn_sampling)
                active = self._advance(episodes, envs, active, turns)
        finally:
            engine.sleep()
        for env in envs:
            env.close()
        return episodes

    def _turns(self, episodes: list[Episode], spare: Episode, sampling: Sampling) -> list[Episode]:
        """The next turn of each episode: the policy's, or its hint's (a whole hinted turn is played as
        written; a partial one is continued by the policy). One engine call however many need the policy,
        with `spare`'s context when none does, since a sharded model's generate is a collective."""
        turns: list[Episode | None] = []
        contexts, asks = [], []  # what the policy continues, and for which episode (with which hint prefix)
        for ep in episodes:
            plan, k = ep.prompt.meta.get(HINT_KEY) or [], ep.info["turns"]
            ids, whole = plan[k] if k < len(plan) else ([], False)
            if whole:
                turns.append(Episode(prompt=ep.prompt, response_ids=list(ids), response_mask=[1] * len(ids),
                                     rollout_logp=[0.0] * len(ids), finished=True, hint_len=len(ids)))
                continue
            ctx = self._context(ep)
            contexts.append(dataclasses.replace(ctx, input_ids=ctx.input_ids + ids, text=ctx.text if not ids else "",
                                                seq={key: v + [0] * len(ids) for key, v in ctx.seq.items()}))
            asks.append((len(turns), ids))
            turns.append(None)
        generated = self.rollout.engine.generate(contexts or [self._context(spare)], sampling)
        for (j, prefix), turn in zip(asks, generated):
            turn.response_ids = prefix + turn.response_ids
            if turn.rollout_logp is not None:
                turn.rollout_logp = [0.0] * len(prefix) + turn.rollout_logp
            turn.hint_len = len(prefix)
            turns[j] = turn
        return turns

    def _step(self, envs: list, texts: list[str]) -> list:
        """`env.step(text)` for each pair; with env_workers > 1 in threads, since a step mostly waits on a tool
        (a sandboxed subprocess, a search, an image crop). Each episode has its own environment."""
        if self.env_workers <= 1 or len(envs) <= 1:
            return [env.step(text) for env, text in zip(envs, texts)]
        with ThreadPoolExecutor(min(self.env_workers, len(envs))) as pool:
            return list(pool.map(lambda pair: pair[0].step(pair[1]), zip(envs, texts)))

    def _fit(self, ep: Episode, turn: Episode) -> bool:
        """Cut `turn` to the room left in `ep`'s token budget (the cut turn is unfinished); True if cut. The
        engine samples every episode with one max_new_tokens, so the per-episode cap is applied here; the
        kept tokens are exactly what a shorter generation would have sampled."""
        room = max(0, self.max_total_tokens - len(ep.response_ids))
        if len(turn.response_ids) <= room:
            return False
        turn.response_ids = turn.response_ids[:room]
        if turn.rollout_logp is not None:
            turn.rollout_logp = turn.rollout_logp[:room]
        turn.hint_len = min(turn.hint_len, room)
        turn.finished = False
        return True

    def _advance(self, episodes: list[Episode], envs: list, active: list[int], turns: list[Episode]) -> list[int]:
        """Record one generated turn per active episode, step its environment; the indices still active."""
        tok = self.rollout.tokenizer
        cut = [self._fit(episodes[i], turn) for i, turn in zip(active, turns)]
        texts = [tok.decode(turn.response_ids, skip_special_tokens=True) for turn in turns]
        # Only finished turns reach the environment: a turn cut by max_new_tokens or the budget holds a half-written
        # action, which must earn no tool reward or format bonus, nor count as the episode's answer.
        stepped = [k for k, turn in enumerate(turns) if turn.finished]
        results = dict(zip(stepped, self._step([envs[active[k]] for k in stepped], [texts[k] for k in stepped])))
        still = []
        for k, (i, turn, text, was_cut) in enumerate(zip(active, turns, texts, cut)):
            ep, env = episodes[i], envs[i]
            if turn.hint_len:  # hints open an episode, so its hinted tokens (and observations) are a prefix
                ep.hint_len = len(ep.response_ids) + turn.hint_len
            self._append(ep, turn.response_ids, True, turn.rollout_logp)
            ep.response_text = text  # the last turn's text: what reward functions score
            ep.info["transcript"].append(text)
            ep.info["turns"] += 1
            if k not in results:
                ep.turn_rewards.append(0.0)
                _end(ep, env, False, "budget" if was_cut else "length", format_ok=False)
                continue
            result = results[k]
            ep.info["tool_calls"] += int(ran_a_tool(result.info))
            ep.turn_rewards.append(float(result.info.get("turn_reward", result.reward)))
            over_budget = len(ep.response_ids) >= self.max_total_tokens
            if result.done or over_budget or result.observation is None:
                # An environment that ends the episode without saying why has taken the turn as its answer.
                _end(ep, env, bool(result.done), result.info.get("stop", "answer" if result.done else "budget"))
                continue
            eos_ids = self.rollout.engine.eos_ids
            close = []  # a stop string ended the turn: close it as the template does
            if not self.renderer.raw and turn.response_ids[-1:] and turn.response_ids[-1] not in eos_ids:
                end = self.renderer.turn_close()[0]
                close = [end if end in eos_ids else eos_ids[0]]
            obs = result.observation
            ids, mm, seq = self.renderer.encode(obs.text, list(obs.images))
            if len(ep.response_ids) + len(close) + len(ids) >= self.max_total_tokens:
                # No room for the observation and a turn after it. Ending here keeps the observation whole
                # (cutting it could split an image's tokens) and the episode within its budget.
                _end(ep, env, False, "budget")
                continue
            if close:
                self._append(ep, close, False)
            self._append(ep, ids, False, seq=seq)
            if mm:
                ep.extra_mm.append(mm)
            ep.info["transcript"].append(tok.decode(ids, skip_special_tokens=True))  # as the policy reads it
            still.append(i)
        return still
