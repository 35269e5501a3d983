"""Build every role from a config and run the chosen pipeline: what `rllava train` calls."""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllava.config import Config, ConfigError, MissingPackageError, check_choice, import_plugins, to_yaml
from rllava.engines import distributed as du
from rllava.pipelines.checkpoint import check_resumable, find_resume_checkpoint
from rllava.pipelines.logger import LOGGERS
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.trainer import RunContext, Trainer

_log = logging.getLogger(__name__)


def parse_device(name: str, what: str = "trainer.device") -> torch.device | None:
    """The device `name` names (None for auto); a name torch does not know is a ConfigError naming `what`."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, ValueError, TypeError):  # torch.device("cdua"): RuntimeError listing every device type
        raise ConfigError(f"{what}={name!r} is not a device: give auto, cpu, cuda or cuda:N") from None


def resolve_device(name: str, what: str = "trainer.device") -> torch.device:
    """The device to run on; `what` names the setting in errors (e.g. --device for `rllava eval`)."""
    device = parse_device(name, what)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name}, but torch sees no CUDA device ({what}=auto picks the CPU)")
    return device


# What transformers accepts besides its registered attention functions: a kernel from the hub, org/name[@rev][:fn].
_HUB_KERNEL = re.compile(r"[^/:@\s]+/[^/:@\s]+(@[^/:@\s]+)?(:[^/:@\s]+)?")


def check_attn_implementation(name: str) -> None:
    """`model.attn_implementation` is one transformers loads: eager, a registered attention function (sdpa,
    flash_attention_2/3, flex_attention, ...; a plugin may register its own) or a hub kernel: else a ConfigError,
    before the model loads."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name in known or _HUB_KERNEL.fullmatch(name):
        return
    close = difflib.get_close_matches(name, known, n=1)
    raise ConfigError(f"model.attn_implementation={name!r} is not one of {', '.join(known)} or a hub kernel "
                      f"(org/name)" + (f"; did you mean {close[0]!r}?" if close else ""))


def installed(package: str) -> bool:
    """Whether `package` can be imported as a real package (a bare folder of that name on sys.path is not one)."""
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin not in (None, "namespace")


def check_settings(cfg: Config) -> None:
    """What a run checks before loading anything (`rllava check` runs it too)."""
    from rllava.models.load import resolve_dtype

    if resolve_dtype(cfg.model.dtype) == torch.float16 and not (cfg.actor.master_weights_fp32 or
                                                                cfg.actor.optimizer_offload):
        raise ConfigError("model.dtype=float16 with actor.master_weights_fp32=false would train fp16 weights, which "
                          "round most small updates away (and AdamW's states overflow): keep fp32 master weights "
                          "(the default, or actor.optimizer_offload=true), or use bfloat16")
    if cfg.trainer.export_dtype != "auto":
        resolve_dtype(cfg.trainer.export_dtype, "trainer.export_dtype")
    parse_device(cfg.trainer.device)  # the name only: `rllava check` may run on a machine without the run's GPUs
    if cfg.reward.model_device:
        parse_device(cfg.reward.model_device, "reward.model_device")
    check_attn_implementation(cfg.model.attn_implementation)
    for name in cfg.trainer.loggers:
        check_choice("trainer.loggers", name, LOGGERS)
    check_names(cfg)
    check_packages(cfg)
    check_mix(cfg)
    check_zero_advantage_skip(cfg)
    supervised = bool(PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"))
    if cfg.critic.pretrain_steps and (supervised or not needs_critic(cfg)):
        raise ConfigError(f"critic.pretrain_steps={cfg.critic.pretrain_steps} but this run has no critic "
                          f"(algorithm.adv_estimator={cfg.algorithm.adv_estimator}; gae has one)")
    if cfg.algorithm.demonstrations and supervised:
        raise ConfigError(f"algorithm.demonstrations={cfg.algorithm.demonstrations} brings demonstrations into RL; "
                          f"trainer.pipeline={cfg.trainer.pipeline} is supervised and trains on them alone")


def check_packages(cfg: Config) -> None:
    """The optional packages the config needs (registry meta `package`, `extra`), checked before any loading."""
    from rllava.engines import OPTIMIZERS, ROLLOUT_ENGINES

    needs = [(OPTIMIZERS.entry(name).meta, f"optimizer {name}") for name in (cfg.actor.optimizer, cfg.critic.optimizer)]
    needs.append((ROLLOUT_ENGINES.entry(cfg.rollout.engine).meta, f"rollout.engine={cfg.rollout.engine}"))
    if "wandb" in cfg.trainer.loggers:
        needs.append(({"package": "wandb", "extra": "wandb"}, "trainer.loggers=[wandb]"))
    for meta, what in needs:
        if "package" in meta and not installed(meta["package"]):
            raise MissingPackageError(f"{what} needs {meta['package']}: pip install 'rllava[{meta['extra']}]'")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setting_registries() -> dict[str, Any]:
    """The settings that name a registry entry (a list setting: each item does), and their registries."""
    from rllava.algorithms import (
        ADVANTAGES,
        AGGREGATIONS,
        GROUP_FILTERS,
        KL_CONTROLLERS,
        KL_ESTIMATORS,
        POLICY_LOSSES,
        REWARD_SHAPERS,
    )
    from rllava.algorithms.demonstrations import SFT_TOKEN_WEIGHTS
    from rllava.algorithms.rollout_correction import IS_CORRECTIONS
    from rllava.engines.optimizers import OPTIMIZERS
    from rllava.engines.registry import ROLLOUT_ENGINES, TRAIN_ENGINES
    from rllava.envs.base import ENVIRONMENTS, TOOLS
    from rllava.envs.parsing import CALL_FORMATS

    return {"algorithm.adv_estimator": ADVANTAGES, "algorithm.policy_loss": POLICY_LOSSES,
            "algorithm.loss_agg_mode": AGGREGATIONS, "algorithm.kl_estimator": KL_ESTIMATORS,
            "algorithm.kl_ctrl": KL_CONTROLLERS, "algorithm.group_filter": GROUP_FILTERS,
            "algorithm.reward_shaping": REWARD_SHAPERS, "algorithm.sft_token_weight": SFT_TOKEN_WEIGHTS,
            "algorithm.tis_mode": IS_CORRECTIONS,
            "actor.strategy": TRAIN_ENGINES, "actor.optimizer": OPTIMIZERS, "critic.optimizer": OPTIMIZERS,
            "rollout.engine": ROLLOUT_ENGINES, "trainer.pipeline": PIPELINES, "env.name": ENVIRONMENTS,
            "env.tools": TOOLS, "env.call_format": CALL_FORMATS}


def check_names(cfg: Config) -> None:
    """Every registry name in the config is registered (plugins imported first): a typo fails in seconds, before
    the model loads, not at the first update."""
    from rllava.registry import UnknownNameError

    for setting, registry in setting_registries().items():
        section, field = setting.split(".")
        value = getattr(getattr(cfg, section), field)
        for name in value if isinstance(value, list) else [value] if value is not None else []:
            try:
                registry.entry(name)
            except UnknownNameError as e:
                raise ConfigError(f"{setting}: {e}") from None


def check_mix(cfg: Config) -> None:
    """data.train_weights gives one weight per train_files entry."""
    from rllava.data.rows import file_entries

    weights = cfg.data.train_weights
    if not weights:
        return
    entries = file_entries(cfg.data.train_files)
    if len(weights) != len(entries):
        raise ConfigError(f"data.train_weights has {len(weights)} weight(s) but data.train_files has {len(entries)} "
                          f"comma-separated entries ({entries}): give one weight per entry")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"data.train_weights={weights}: weights must be >= 0 and sum to more than 0")


def check_zero_advantage_skip(cfg: Config) -> None:
    """actor.skip_zero_advantage only where leaving those rows out leaves the gradient as it is."""
    from rllava.algorithms.losses import POLICY_LOSSES

    if not cfg.actor.skip_zero_advantage:
        return
    algo = cfg.algorithm
    terms = {"algorithm.entropy_coef": algo.entropy_coef != 0,
             "algorithm.kl_coef with kl_in=loss": algo.kl_coef > 0 and algo.kl_in == "loss",
             "algorithm.positive_nll_coef": algo.positive_nll_coef != 0,
             "algorithm.demonstrations": algo.demonstrations is not None, "algorithm.sft_coef": algo.sft_coef != 0}
    if not POLICY_LOSSES.entry(algo.policy_loss).meta.get("row_local"):
        raise ConfigError(f"actor.skip_zero_advantage needs a policy loss in which a zero-advantage row has no gradient "
                          f"and rows do not interact; algorithm.policy_loss={algo.policy_loss} is not one "
                          f"({', '.join(n for n in POLICY_LOSSES.names() if POLICY_LOSSES.entry(n).meta.get('row_local'))} are)")
    on = [name for name, active in terms.items() if active]
    if on:
        raise ConfigError(f"actor.skip_zero_advantage: {on[0]} gives zero-advantage rows a gradient of their own, "
                          "so leaving them out would change the update")


def export_dtype(cfg: Config) -> torch.dtype | None:
    """What checkpoints' HF folders are written in (trainer.export_dtype); None: as trained.

    `auto` is the dtype the model was released in, unless the trained weights are narrower (model.dtype weights
    when actor.master_weights_fp32=false): widening them adds no precision. Under actor.optimizer_offload the
    export reads the fp32 CPU masters.
    """
    from rllava.models.load import released_dtype, resolve_dtype

    if cfg.trainer.export_dtype != "auto":
        return resolve_dtype(cfg.trainer.export_dtype, "trainer.export_dtype")
    released = released_dtype(cfg.model.path, cfg.model.trust_remote_code)
    narrow = not cfg.actor.master_weights_fp32 and not cfg.actor.optimizer_offload  # only model.dtype weights exist
    trained = resolve_dtype(cfg.model.dtype if narrow else "float32")
    return released if released is not None and released.itemsize <= trained.itemsize else None


def training_model_config(cfg: Config, path: str | None = None):
    """The ModelConfig to load the trained model with: fp32 master weights unless disabled."""
    dtype = "float32" if cfg.actor.master_weights_fp32 or cfg.actor.optimizer_offload else cfg.model.dtype
    return dataclasses.replace(cfg.model, dtype=dtype, path=path or cfg.model.path)


def sequences_per_step(cfg: Config) -> int:
    """Rows one training step updates on: a prompt each for a supervised pipeline; else `rollout.n` rollouts a
    prompt, plus its demonstration under `algorithm.demonstrations` mix or sft (switch: at most this many)."""
    if PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"):
        return cfg.data.batch_size
    return cfg.data.batch_size * (cfg.rollout.n + (cfg.algorithm.demonstrations in ("mix", "sft")))


def optimizer_steps_per_step(cfg: Config) -> int:
    """Optimizer steps a training step takes (ppo epochs x mini-batches): the lr schedule's unit."""
    return cfg.actor.ppo_epochs * max(1, math.ceil(sequences_per_step(cfg) / (cfg.actor.mini_batch_size or 10**9)))


def build_context(cfg: Config, run_dir: Path, resume_ckpt: Path | None) -> RunContext:
    # Imported here so `rllava list/config` stay light.
    from rllava.data.dataset import PromptLoader, RLDataset
    from rllava.data.template import set_chat_template
    from rllava.engines import ROLLOUT_ENGINES, TRAIN_ENGINES
    from rllava.models.introspect import placeholder_token_ids
    from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, local_path, pad_token_id
    from rllava.roles.actor import Actor
    from rllava.roles.reward import RewardScorer, check_sources
    from rllava.roles.rollout import Rollout

    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (init_distributed set it)
    a = cfg.actor
    check_settings(cfg)  # these fail before any loading
    supervised = bool(PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"))  # no reference or critic
    sharded = bool(TRAIN_ENGINES.entry(a.strategy).meta.get("distributed"))
    if sharded:
        du.require_process_group(a.strategy)
    # A sharding engine places the shards itself: load on the CPU rather than a whole copy per GPU. So does
    # optimizer offload: the fp32 masters are made on the CPU, and the device only gets model.dtype weights.
    load_device = torch.device("cpu") if sharded or a.optimizer_offload else device
    # On resume `engine.load` restores the trained weights. A rollout engine that reads weights from disk
    # (vLLM) starts from the checkpoint's HF folder, except under LoRA (that folder is merged, not the base).
    model_path = str(resume_ckpt / "model") if resume_ckpt is not None and cfg.model.lora_rank == 0 else None
    model, processor = load_model_and_processor(training_model_config(cfg), device=load_device)
    set_chat_template(processor, cfg.data.chat_template)  # also what the checkpoints' processor carries
    tokenizer = get_tokenizer(processor)
    pad_id = pad_token_id(processor)
    eos_ids = eos_token_ids(model, processor)

    train_ds = RLDataset(cfg.data.train_files, cfg.data, processor)
    val_ds = RLDataset(cfg.data.val_files, cfg.data, processor) if cfg.data.val_files else None
    check_sources(cfg.reward, {"train": train_ds.sources(), **({"val": val_ds.sources()} if val_ds else {})})
    val_prompts = loaded_prompts(val_ds, cfg.data.max_val_samples) if val_ds is not None else []
    loader = PromptLoader(train_ds, cfg.data.batch_size, shuffle=cfg.data.shuffle, seed=cfg.trainer.seed,
                          weights=cfg.data.train_weights or None, sources=train_ds.entries())
    total_steps = min(cfg.trainer.total_steps, cfg.trainer.total_epochs * max(1, loader.steps_per_epoch))
    updates_per_step = optimizer_steps_per_step(cfg)
    engine = TRAIN_ENGINES.get(a.strategy)(
        model, lr=a.lr, weight_decay=a.weight_decay, betas=tuple(a.betas), warmup_steps=a.warmup_steps,
        lr_scheduler=a.lr_scheduler, total_steps=total_steps * updates_per_step, max_grad_norm=a.max_grad_norm,
        compute_dtype=cfg.model.dtype, device=device, cpu_offload=a.param_offload,
        optimizer_offload=a.optimizer_offload, optimizer=a.optimizer, **sharded_vlm_kwargs(sharded, processor))
    rollout_engine = ROLLOUT_ENGINES.get(cfg.rollout.engine)(
        model, pad_id=pad_id, eos_ids=eos_ids, device=device, batch_size=cfg.rollout.batch_size,
        compute=engine.generation, suppress_ids=placeholder_token_ids(model, processor),
        model_path=model_path or local_path(cfg.model.path), processor=processor, rollout_cfg=cfg.rollout)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, model=model, processor=processor, tokenizer=tokenizer, pad_id=pad_id,
                     export_dtype=export_dtype(cfg),
                     device=device, engine=engine, actor=Actor(engine, cfg),
                     rollout=Rollout(rollout_engine, tokenizer, cfg.rollout),
                     reward=RewardScorer(cfg.reward, cfg.plugins, device, cfg.model.dtype),
                     loader=loader, val_prompts=val_prompts, extra={"eos_ids": eos_ids})
    if cfg.algorithm.kl_coef > 0 and not supervised:
        ctx.reference = build_reference(cfg, model, device, engine)
    if not supervised and needs_critic(cfg):
        from rllava.roles.critic import Critic

        ctx.critic = Critic.build(cfg, device, total_steps, load_device=load_device)
    return ctx


def sharded_vlm_kwargs(sharded: bool, processor) -> dict:
    """A sharding engine's extra argument for a VLM: the blank image a rank without images runs the tower on."""
    if not sharded:
        return {}
    from rllava.engines.fsdp2 import blank_image_inputs

    probe = blank_image_inputs(processor)
    return {"media_probe": probe} if probe is not None else {}


def loaded_prompts(ds, limit: int | None = None) -> list:
    """The first `limit` (None: all) prompts of `ds`, processed in full, for validation or evaluation. A row that
    fails to load (a truncated image: rows are checked without decoding them) stops with its error, unless
    data.skip_bad_rows drops it (counted in `ds.n_bad`), as the train loader does."""
    from rllava.data.loader import load_or_skip

    prompts: list = []
    for i in range(len(ds)):
        if limit is not None and len(prompts) >= limit:
            break
        prompt = load_or_skip(ds, i)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def check_demonstrations(pipeline, ds) -> list[int]:
    """Every train row's demonstration, where the pipeline trains on them: a bad row fails before training, naming
    its file, row and field, not when its batch comes up hours later. Under data.skip_bad_rows such rows are
    counted as bad (`ds.n_bad`) and returned, for the loader to pass over."""
    from rllava.data.rows import DataError

    check = pipeline.demonstration_check() if hasattr(pipeline, "demonstration_check") else None
    if check is None:  # this run trains on no demonstrations, so no row is read for them
        return []
    bad: list[int] = []
    for i in range(len(ds)):
        try:
            check(ds.meta(i), ds.where(i))
        except DataError as e:
            if not getattr(ds, "skip_bad_rows", False):
                raise
            if not bad:
                _log.warning("skipping train rows whose demonstration cannot be read (data.skip_bad_rows=true); "
                             "first: %s", e)
            bad.append(i)
    ds.n_bad += len(bad)
    return bad


def needs_critic(cfg: Config) -> bool:
    from rllava.algorithms import ADVANTAGES

    return "values" in ADVANTAGES.entry(cfg.algorithm.adv_estimator).meta.get("requires", ())


def build_reference(cfg: Config, model, device, engine):
    from rllava.models.load import load_model_and_processor
    from rllava.roles.reference import Reference

    if cfg.model.lora_rank > 0 and cfg.reference.model_path is None:
        return Reference(model, cfg, device, engine.compute, use_disabled_adapter=True)
    # The reference is never trained: keep it in the compute dtype and without LoRA.
    ref_cfg = dataclasses.replace(cfg.model, path=cfg.reference.model_path or cfg.model.path, lora_rank=0,
                                  gradient_checkpointing=False)
    ref_model, _ = load_model_and_processor(ref_cfg, device=device)
    return Reference(ref_model, cfg, device, engine.compute)


def run_experiment(cfg: Config) -> dict[str, Any]:
    """Train as `cfg` says; under torchrun every rank calls this (one process group for the run)."""
    import_plugins(cfg.plugins)
    owns_group = not du.is_initialized()
    du.init_distributed()
    run_dir = Path(cfg.trainer.output_dir) / cfg.trainer.experiment_name
    seed_everything(cfg.trainer.seed)  # the same on every rank while models are built (random inits must agree)
    pipeline = PIPELINES.get(cfg.trainer.pipeline)(cfg)
    ckpt = du.broadcast_object(find_resume_checkpoint(cfg.trainer.resume, run_dir) if du.is_main() else None)
    if ckpt is not None:  # a supervised pipeline builds neither a critic nor a reference (an RL config's settings)
        supervised = bool(PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"))
        check_resumable(ckpt, cfg, critic=not supervised and needs_critic(cfg),
                        moving_reference=not supervised and bool(cfg.reference.sync_steps))
    ctx = build_context(cfg, run_dir, ckpt)
    ctx.loader.skipped.update(check_demonstrations(pipeline, ctx.loader.dataset))  # (a resume restores the same)
    if hasattr(pipeline, "setup"):  # pipeline-specific parts (an environment, ...) built from the context
        pipeline.setup(ctx)
    if du.is_main():  # only once the run is set up: an invocation that fails its checks leaves a run's config alone
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    seed_everything(cfg.trainer.seed + du.rank())  # each rank samples its own rollouts
    try:
        result = Trainer(ctx, pipeline).fit(ckpt)
    finally:
        ctx.reward.close()
    if owns_group:  # only after success: a rank that failed must not leave its peers waiting in a barrier
        du.destroy_distributed()
    return result
