"""Rollout with HF `generate` on the training module itself: no weight copy, no sync.

With n samples per prompt, each distinct prompt is prefilled once (its images through the vision
tower once) and the KV cache is gathered to one row per sample; `generate` then continues from
that cache. Greedy outputs equal the plain `generate`'s for every model family (tests).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rllava.data.types import Batch, Episode, Prompt
from rllava.engines import distributed as du
from rllava.engines.registry import ROLLOUT_ENGINES
from rllava.models.introspect import get_tokenizer, unwrap
from rllava.models.shared_prompt import _cache_kwarg, position_ids


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    logprobs: bool = False  # record each sampled token's log-prob (Episode.rollout_logp)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def response_end(ids: list[int], eos_ids: set[int], stop: list[str], tokenizer) -> int | None:
    """How many of `ids` a response keeps: through its first EOS, or through the token that completes the
    first of the `stop` strings in the decoded text (the string stays in the response); None: neither came."""
    cut = next((j + 1 for j, t in enumerate(ids) if t in eos_ids), None)
    if not stop or not any(s in tokenizer.decode(ids[:cut]) for s in stop):
        return cut
    low, high = 1, len(ids) if cut is None else cut  # the shortest prefix that holds a stop string
    while low < high:
        mid = (low + high) // 2
        if any(s in tokenizer.decode(ids[:mid]) for s in stop):
            high = mid
        else:
            low = mid + 1
    return low


@contextmanager
def sampling_config_only(model: nn.Module):
    """While generating, the model's generation config keeps only its special-token ids.

    A checkpoint's generation_config.json may carry sampling settings (Qwen2.5-Instruct ships
    `repetition_penalty: 1.05`) that `generate` would apply on top of ours. The trainer's log-probs
    assume plain softmax(logits / T), so such a rollout would be off-policy; the vLLM engine does
    not apply them either. Wanted anyway? Name them in `rollout.generate_kwargs`."""
    from transformers import GenerationConfig

    inner = unwrap(model)
    saved = getattr(inner, "generation_config", None)
    if saved is None:
        yield
        return
    ids = {k: getattr(saved, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    inner.generation_config = GenerationConfig(**{k: v for k, v in ids.items() if v is not None})
    try:
        yield
    finally:
        inner.generation_config = saved


class StopOnStrings:
    """A `generate` stopping criterion: a row is done once its generated text (never the prompt's, unlike
    HF's `stop_strings`) holds a stop string. Only the last few tokens are decoded each step: a string of
    L characters spans at most 4 L byte-level tokens."""

    def __init__(self, tokenizer, stop: list[str], prompt_width: int):
        self.tokenizer, self.stop, self.start = tokenizer, stop, prompt_width
        self.window = 4 * max(len(s) for s in stop) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window):].tolist()
        done = [any(s in text for s in self.stop) for text in self.tokenizer.batch_decode(tail)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@ROLLOUT_ENGINES.register("hf", description="HF generate on the policy module itself (KV cache, left-padded batches)")
class HFRolloutEngine:
    """Extra keyword arguments (model_path, processor, rollout_cfg) are for engines that need them (vLLM)."""

    def __init__(self, model: nn.Module, pad_id: int, eos_ids: list[int], device: torch.device | str = "cpu",
                 batch_size: int = 0, compute=None, suppress_ids: list[int] | None = None, rollout_cfg=None,
                 processor=None, **_unused):
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = list(eos_ids)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.compute = compute  # context manager factory from the train engine (autocast, eval, no_grad)
        self.suppress_ids = list(suppress_ids or [])  # image/video placeholders: never valid in a response
        self.generate_kwargs = dict(getattr(rollout_cfg, "generate_kwargs", None) or {})  # e.g. a static KV cache
        # Prefill each distinct prompt once; not with a cache of generate's own choosing (e.g. static).
        self.share_prefill = getattr(rollout_cfg, "share_prefill", True) and "cache_implementation" not in self.generate_kwargs
        self.stop = list(getattr(rollout_cfg, "stop", None) or [])  # strings that end a response, kept in it
        self.tokenizer = get_tokenizer(processor) if processor is not None else None
        if self.stop and self.tokenizer is None:
            raise ValueError("rollout.stop needs the processor (its tokenizer decodes the responses)")

    def sync_weights(self, model: nn.Module | None = None) -> None:
        """Nothing to do: generation uses the training module's own parameters."""

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        """n episodes per prompt, grouped consecutively; group ids start at `group_offset`."""
        episodes = [Episode(prompt=p, group_id=group_offset + i) for i, p in enumerate(prompts) for _ in range(sampling.n)]
        step = self.batch_size or max(1, len(episodes))
        chunks = -(-len(episodes) // step)
        if du.is_initialized():  # a sharded model's generate is a collective: as many calls on every rank
            chunks = int(du.all_reduce_max(chunks))
        for c in range(chunks):
            part = episodes[c * step:(c + 1) * step]
            if not part and not episodes:
                raise RuntimeError("a rank with no prompt cannot join the other ranks' generate calls")
            # A rank with fewer chunks generates for a copy of its first episode and drops the result.
            self._generate_chunk(part or [Episode(prompt=episodes[0].prompt)], sampling)
        return episodes

    def _prefill_once(self, text: dict[str, torch.Tensor], share) -> dict:
        """Run the distinct prompts but their last token once, with a KV cache gathered to one row per
        sample: `generate` feeds the last prompt token on top of it and goes on from there. `text`: the
        chunk's ids, mask and per-token extras (all [B, P]); the images come from `share`."""
        from transformers import DynamicCache

        prefix = {k: v[:, :-1] for k, v in text.items()}  # every row's; the prefill runs the distinct ones
        pre = {k: v[share.rows] for k, v in prefix.items()}
        pre.update(share.images)
        base = unwrap(self.model).base_model  # no LM head: the prefill's logits are not needed
        # Positions as the plain forward has them. Left padding does not count; an M-RoPE model left alone
        # would count it in a text-only chunk (no grids: it falls back to column positions).
        pos = position_ids(base, prefix, share)  # [B, P-1], or M-RoPE's [3, B, P-1]
        pre["position_ids"] = pos[..., share.rows, :]
        cache_arg = _cache_kwarg(base)
        cache = DynamicCache(config=self.model.config)
        base(**pre, **{cache_arg: cache}, use_cache=True)
        cache.batch_select_indices(share.of_row)
        if pos.dim() == 3:
            # M-RoPE: `generate` places the next tokens at their mask-based text position plus the model's stored
            # `rope_deltas`. Set them for this chunk, one per sample: a previous chunk's may still be stored.
            mask = prefix["attention_mask"].bool()
            last = pos.masked_fill(~mask, -1).amax(dim=(0, 2))  # -1: a row with no prefix token
            deltas = (last + 1 - mask.sum(-1)).unsqueeze(1)
            for module in base.modules():
                if "rope_deltas" in vars(module):
                    module.rope_deltas = deltas
        return {cache_arg: cache}

    def _generate_chunk(self, episodes: list[Episode], sampling: Sampling) -> None:
        batch = Batch.from_episodes(episodes, self.pad_id)
        kwargs = dict(self.generate_kwargs, max_new_tokens=sampling.max_new_tokens, do_sample=not sampling.greedy,
                      eos_token_id=self.eos_ids, pad_token_id=self.pad_id, use_cache=True,
                      suppress_tokens=self.suppress_ids or None)
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        if sampling.logprobs:
            kwargs.update(return_dict_in_generate=True, output_logits=True)
        ctx = self.compute(train=False) if self.compute else torch.no_grad()
        with ctx, sampling_config_only(self.model):
            # The prefill leaves out each prompt's last token: not where that token is an image placeholder
            # (a raw template ending in <image>), whose features the prefill's images would then not match.
            ends_in_image = any(t in self.suppress_ids for p in batch.prompts for t in p.input_ids[-1:])
            share = (batch.prompt_share(self.device) if self.share_prefill and batch.prompt_width > 1
                     and not ends_in_image else None)
            inputs = batch.model_inputs(self.device, images=share is None)  # shared: the images go into the cache
            if share is not None:
                kwargs.update(self._prefill_once(inputs, share))
            if self.stop:  # stop early; response_end below finds the exact token
                from transformers import StoppingCriteriaList

                width = inputs["input_ids"].shape[1]
                kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(self.tokenizer, self.stop, width)])
            out = self.model.generate(**inputs, **kwargs)
        sequences = out.sequences if sampling.logprobs else out
        new_ids = sequences[:, inputs["input_ids"].shape[1]:]
        new = new_ids.tolist()
        logps = None
        if sampling.logprobs:  # raw logits / temperature, as the trainer recomputes them
            temp = sampling.temperature if not sampling.greedy else 1.0
            logps = torch.stack([torch.log_softmax(step.float() / temp, -1).gather(-1, new_ids[:, i:i + 1]).squeeze(-1)
                                 for i, step in enumerate(out.logits)], 1).tolist()
        eos = set(self.eos_ids)
        for i, (ep, ids) in enumerate(zip(episodes, new)):
            cut = response_end(ids, eos, self.stop, self.tokenizer)
            ep.finished = cut is not None
            ep.response_ids = ids[:cut] if cut is not None else ids
            ep.response_mask = [1] * len(ep.response_ids)
            if logps is not None:
                ep.rollout_logp = logps[i][: len(ep.response_ids)]
