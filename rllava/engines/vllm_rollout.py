"""Rollout with an in-process vLLM `LLM` colocated with training; weights are copied in place before each rollout.

vLLM is imported only when the engine is built, so registering "vllm" costs nothing where it
is not installed. The engine runs vLLM in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`)
so that weights can be handed over as tensors, with no serialization. Under torchrun every
rank builds its own engine (vLLM's "external_launcher" backend) and generates its own shard
of prompts, as the HF engine does.

Weights: `wake()` copies the training module's current weights into vLLM (`sync_weights`)
every time, because no cheap test is sure to tell whether they changed: fused AdamW and `.data`
writes leave tensor version counters alone. `generate()` on an awake engine re-syncs too when
the version counters did move (torch's default AdamW bumps them), for callers that never
sleep and wake the engine between updates.
"""
from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rllava.config import ConfigError, MissingPackageError
from rllava.data.types import Episode, Prompt
from rllava.engines.hf_rollout import Sampling, response_end
from rllava.engines.registry import ROLLOUT_ENGINES
from rllava.models.introspect import get_tokenizer
from rllava.models.weights import hf_weights


@torch.no_grad()
def _reprocess_tied(model: nn.Module) -> None:
    """Re-derive kernel data of layers that share a weight tensor (a tied LM head) after an in-place reload.

    vLLM's reload re-processes each layer whose checkpoint tensors arrived. A tied LM head has none
    of its own (the checkpoint stores the embedding only), so on CPU its prepacked GEMM copy of the
    weight would keep the old values; re-running its post-load step rebuilds it (a no-op on GPU).
    """
    by_storage: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        # Only unquantized layers: re-running a quantization step on already processed data would corrupt it.
        if isinstance(weight, torch.Tensor) and not weight.is_meta and type(method).__name__.startswith("Unquantized"):
            by_storage.setdefault(weight.data_ptr(), []).append(module)
    for modules in by_storage.values():
        for module in modules if len(modules) > 1 else ():
            process = getattr(module.quant_method, "process_weights_after_loading", None)
            if process is not None:
                process(module)


def _version(model: nn.Module) -> int:
    """Sum of the parameters' in-place write counters: it moves whenever torch's default AdamW steps."""
    return sum(p._version for p in model.parameters())


def _sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the torchrun group this process is in, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@ROLLOUT_ENGINES.register("vllm", description="in-process vLLM colocated with training; weights synced in place",
                          package="vllm", extra="vllm")
class VLLMRolloutEngine:
    """Same contract as HFRolloutEngine: `generate` returns n episodes per prompt, grouped consecutively.

    Settings come from `rollout_cfg` (gpu_memory_utilization, enforce_eager, and, when present,
    `sleep_level` and `vllm_kwargs`: extra `vllm.LLM` arguments such as dtype or max_model_len)
    and from keyword arguments here, which win. `batch_size` is ignored: vLLM schedules its own
    batches (cap them with `max_num_seqs`). `Episode.rollout_logp` is always filled (it is free).
    """

    def __init__(self, model: nn.Module, pad_id: int, eos_ids: list[int], device: torch.device | str = "cpu",
                 batch_size: int = 0, compute=None, suppress_ids: list[int] | None = None,
                 model_path: str | None = None, processor: Any = None, rollout_cfg: Any = None,
                 sleep_level: int | None = None, **llm_kwargs: Any):
        if not model_path or not Path(model_path).is_dir():
            raise ConfigError(f"rollout.engine=vllm needs model.path to be an HF model folder, got {model_path!r}")
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = list(eos_ids)
        self.suppress_ids = list(suppress_ids or [])  # image/video placeholders: never valid in a response
        self.stop = list(getattr(rollout_cfg, "stop", None) or [])  # strings that end a response, kept in it
        self.tokenizer = get_tokenizer(processor) if processor is not None else None
        # Level 1 keeps a host copy of the weights, so a parameter the sync might miss stays right;
        # level 2 drops them (less host memory) and relies on the sync alone.
        self.sleep_level = sleep_level or getattr(rollout_cfg, "sleep_level", None) or 1
        self.rank, world = _distributed()
        _set_env_defaults()
        try:
            import vllm
            from vllm import LLM, SamplingParams  # noqa: F401  (fails cleanly where a stray "vllm" folder shadows it)
        except ImportError as e:
            raise MissingPackageError("rollout.engine=vllm needs the vllm package (pip install 'rllava[vllm]'; "
                                      "see docs/vllm.md)") from e
        self.vllm = vllm
        self.sleep_enabled = _sleep_mode_available()  # CUDA/ROCm/XPU; on CPU sleep and wake only sync
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype="auto", seed=(torch.initial_seed() + self.rank) % 2**31,
            enable_sleep_mode=self.sleep_enabled,
            # Log-probs of the distribution tokens were drawn from (after temperature), as the trainer computes them.
            logprobs_mode="processed_logprobs")
        if rollout_cfg is not None:
            kwargs.update(gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                          enforce_eager=rollout_cfg.enforce_eager, **(getattr(rollout_cfg, "vllm_kwargs", None) or {}))
        kwargs.update(llm_kwargs)
        if world > 1 and "distributed_executor_backend" not in kwargs:
            # Each torchrun rank hosts an engine; tensor-parallel groups (if any) form from the existing ranks.
            if kwargs.get("tensor_parallel_size", 1) != 1:
                raise ConfigError("rollout.engine=vllm under torchrun supports tensor_parallel_size=1 only: "
                                 "each rank generates its own prompts")
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(**kwargs)
        self._shutdown = _quiet_shutdown_hook(self.llm)
        self._awake = True  # a fresh engine holds weights and KV cache
        # vLLM loaded model_path, which may differ from the training weights: nothing synced yet.
        self._synced: tuple[nn.Module, int] | None = None  # (module synced from, its _version then)

    # ---- weights and memory

    def sync_weights(self, model: nn.Module | None = None) -> None:
        """Copy `model`'s (default: the training module's) current weights into vLLM, in place."""
        model = model if model is not None else self.model
        stream = hf_weights(model)
        if self.llm.collective_rpc(lambda worker: hasattr(worker, "reload_weights"))[0]:
            # vLLM >= 0.11: reload through the model loader, which re-runs post-load processing (fusion, repacking).
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True})
            self.llm.apply_model(_reprocess_tied)
        else:
            self.llm.apply_model(lambda m: m.load_weights(stream))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._synced = (model, _version(model))

    def sleep(self) -> None:
        """Free the KV cache and offload (level 1) or drop (level 2) vLLM's weights; a no-op where unsupported."""
        if self.sleep_enabled and self._awake:
            self.llm.sleep(level=self.sleep_level)
        self._awake = False

    def wake(self) -> None:
        """Bring weights back, copy the current training weights in, then reallocate the KV cache."""
        if self.sleep_enabled and not self._awake:
            # Memory the training step freed is still held by torch's caching allocator, where vLLM's allocator
            # cannot reach it: give it back before vLLM takes its weights and KV cache again.
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])  # weights first, so the copy runs before the KV cache takes the room
        self.sync_weights()
        if self.sleep_enabled and not self._awake:
            self.llm.wake_up(tags=["kv_cache"])
        self._awake = True

    def close(self) -> None:
        """Shut vLLM down now instead of at interpreter exit.

        vLLM's teardown destroys torch.distributed's default group as well as its own, so under
        torchrun every rank calls this last, after the trainer's final collective.
        """
        if self.llm is None:
            return
        if self._shutdown is not None:
            self._shutdown()  # a weakref.finalize: runs once, then never again at exit
        else:
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None

    # ---- generation

    def _sampling_params(self, sampling: Sampling):
        kwargs: dict[str, Any] = dict(n=1, max_tokens=sampling.max_new_tokens, stop_token_ids=self.eos_ids,
                                      logprobs=0, detokenize=False)  # 0: just the sampled token's log-prob
        if sampling.greedy:
            kwargs.update(temperature=0.0)
        else:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k if sampling.top_k > 0 else -1)
        if self.suppress_ids:
            kwargs["logit_bias"] = {int(t): float("-inf") for t in self.suppress_ids}
        if self.stop:  # vLLM stops on text, so it detokenizes; response_end then finds the exact token
            kwargs.update(stop=self.stop, include_stop_str_in_output=True, detokenize=True)
        return self.vllm.SamplingParams(**kwargs)

    @staticmethod
    def _request(prompt: Prompt) -> dict[str, Any]:
        """vLLM's input for one prompt: token ids, or, with images, the chat text for vLLM's own processor."""
        if not prompt.mm:
            return {"prompt_token_ids": list(prompt.input_ids)}
        where = f"prompt {prompt.index}" if prompt.index >= 0 else "a prompt"
        if any("video" in k for k in prompt.mm):
            raise NotImplementedError(f"{where}: video inputs are not supported by rollout.engine=vllm yet; use hf")
        if not prompt.images or not prompt.text:
            raise NotImplementedError(
                f"{where} has image inputs but no raw images/text (a multi-turn context?): rollout.engine=vllm "
                "supports single-turn image prompts; use rollout.engine=hf")
        # Our input_ids hold the processor's expanded image tokens; vLLM expands placeholders itself, so it
        # gets the unexpanded chat text and the (already resized) images, and the ids are compared afterwards.
        return {"prompt": prompt.text, "multi_modal_data": {"image": list(prompt.images)}}

    def generate(self, prompts: list[Prompt], sampling: Sampling, group_offset: int = 0) -> list[Episode]:
        """n episodes per prompt, grouped consecutively; group ids start at `group_offset`."""
        episodes = [Episode(prompt=p, group_id=group_offset + i) for i, p in enumerate(prompts) for _ in range(sampling.n)]
        if not episodes:
            return episodes
        if not self._awake or self._synced is None or _version(self._synced[0]) != self._synced[1]:
            self.wake()
        # One request per episode: vLLM refuses n > 1 for greedy, and prefix caching shares a group's prefill anyway.
        by_prompt = [self._request(p) for p in prompts]
        requests = [by_prompt[i] for i in range(len(prompts)) for _ in range(sampling.n)]
        extra = {"tokenization_kwargs": {"add_special_tokens": False}} if any("prompt" in r for r in by_prompt) else {}
        outputs = self.llm.generate(requests, self._sampling_params(sampling), use_tqdm=False, **extra)
        eos = set(self.eos_ids)
        for ep, out in zip(episodes, outputs):
            if list(out.prompt_token_ids) != list(ep.prompt.input_ids):
                raise ConfigError(
                    f"prompt {ep.prompt.index}: vLLM built {len(out.prompt_token_ids)} prompt tokens where rllava's "
                    f"processor built {len(ep.prompt.input_ids)}; the trainer would score a different prompt than "
                    "the one sampled (check the image resize settings and the processor config)")
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logps = [lp[t].logprob for lp, t in zip(sample.logprobs, ids)]
            cut = response_end(ids, eos, self.stop, self.tokenizer)
            ep.finished = cut is not None
            ep.response_ids = ids[:cut] if cut is not None else ids
            ep.response_mask = [1] * len(ep.response_ids)
            ep.rollout_logp = logps[: len(ep.response_ids)]
        return episodes


def _shutdown_quietly(core: Any) -> None:
    try:
        core.shutdown()
    except (ValueError, RuntimeError, AssertionError):
        pass  # the process group it would tear down is already gone (the trainer left it first)


def _quiet_shutdown_hook(llm: Any) -> weakref.finalize | None:
    """Replace vLLM's exit-time teardown with one that tolerates a destroyed process group.

    In one process vLLM creates torch.distributed's default group itself; a trainer that then
    leaves "its" group at the end of a run makes vLLM's own teardown raise at interpreter exit.
    Returns the new finalizer (None where this vLLM version has no in-process client finalizer).
    """
    client = llm.llm_engine.engine_core
    finalizer = getattr(client, "_finalizer", None)
    core = getattr(client, "engine_core", None)
    if not isinstance(finalizer, weakref.finalize) or core is None or finalizer.detach() is None:
        return None
    return weakref.finalize(client, _shutdown_quietly, core)


def _set_env_defaults() -> None:
    """vLLM settings that must be in the environment before it starts (a user's own values win)."""
    # In-process engine: weights go in as tensors, and torchrun ranks stay deterministic.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Compile and kernel caches under the temp dir rather than ~/.cache.
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "rllava-vllm-cache"))
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM CPU otherwise sizes it from free RAM
