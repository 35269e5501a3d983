"""Build every role from a config and run the chosen pipeline: what `rllava train` calls."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllava.config import Config, import_plugins, to_yaml
from rllava.pipelines.checkpoint import find_resume_checkpoint, load_state
from rllava.pipelines.registry import PIPELINES
from rllava.pipelines.trainer import RunContext, Trainer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_model_config(cfg: Config, path: str | None = None):
    """The ModelConfig to load the trained model with: fp32 master weights unless disabled."""
    dtype = "float32" if cfg.actor.master_weights_fp32 else cfg.model.dtype
    return dataclasses.replace(cfg.model, dtype=dtype, path=path or cfg.model.path)


def build_context(cfg: Config, run_dir: Path, resume_ckpt: Path | None) -> RunContext:
    # Imported here so `rllava list/config` stay light.
    from rllava.data.dataset import PromptLoader, RLDataset
    from rllava.engines import ROLLOUT_ENGINES, TRAIN_ENGINES
    from rllava.models.introspect import placeholder_token_ids
    from rllava.models.load import eos_token_ids, get_tokenizer, load_model_and_processor, pad_token_id
    from rllava.roles.actor import Actor
    from rllava.roles.reward import RewardScorer
    from rllava.roles.rollout import Rollout

    device = resolve_device(cfg.trainer.device)
    lora = cfg.model.lora_rank > 0
    # Resuming a full-parameter run loads the checkpoint's HF folder; a LoRA run reloads its adapter.
    model_path = str(resume_ckpt / "model") if resume_ckpt is not None and not lora else None
    model, processor = load_model_and_processor(training_model_config(cfg, model_path), device=device)
    if resume_ckpt is not None and lora:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(resume_ckpt / "model" / "adapter" / "adapter_model.safetensors")))
    tokenizer = get_tokenizer(processor)
    pad_id = pad_token_id(processor)
    eos_ids = eos_token_ids(model, processor)

    train_ds = RLDataset(cfg.data.train_files, cfg.data, processor)
    val_ds = RLDataset(cfg.data.val_files, cfg.data, processor) if cfg.data.val_files else None
    val_prompts = [val_ds[i] for i in range(len(val_ds))] if val_ds is not None else []
    if cfg.data.max_val_samples is not None:
        val_prompts = val_prompts[: cfg.data.max_val_samples]
    loader = PromptLoader(train_ds, cfg.data.batch_size, shuffle=cfg.data.shuffle, seed=cfg.trainer.seed)
    total_steps = min(cfg.trainer.total_steps, cfg.trainer.total_epochs * max(1, loader.steps_per_epoch))
    updates_per_step = cfg.actor.ppo_epochs * max(1, -(-cfg.data.batch_size * cfg.rollout.n // (cfg.actor.mini_batch_size or 10**9)))
    a = cfg.actor
    engine = TRAIN_ENGINES.get(a.strategy)(
        model, lr=a.lr, weight_decay=a.weight_decay, betas=tuple(a.betas), warmup_steps=a.warmup_steps,
        lr_scheduler=a.lr_scheduler, total_steps=total_steps * updates_per_step, max_grad_norm=a.max_grad_norm,
        compute_dtype=cfg.model.dtype, device=device)
    rollout_engine = ROLLOUT_ENGINES.get(cfg.rollout.engine)(
        model, pad_id=pad_id, eos_ids=eos_ids, device=device, batch_size=cfg.rollout.batch_size, compute=engine.compute,
        suppress_ids=placeholder_token_ids(model, processor), model_path=model_path or cfg.model.path,
        processor=processor, rollout_cfg=cfg.rollout)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, model=model, processor=processor, tokenizer=tokenizer, pad_id=pad_id,
                     device=device, engine=engine, actor=Actor(engine, cfg),
                     rollout=Rollout(rollout_engine, tokenizer, cfg.rollout), reward=RewardScorer(cfg.reward),
                     loader=loader, val_prompts=val_prompts, extra={"eos_ids": eos_ids})
    if cfg.algorithm.kl_coef > 0 and cfg.trainer.pipeline != "sft":
        ctx.reference = build_reference(cfg, model, device, engine)
    if cfg.trainer.pipeline != "sft" and needs_critic(cfg):
        from rllava.roles.critic import Critic

        ctx.critic = Critic.build(cfg, device, total_steps)
    return ctx


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
    import_plugins(cfg.plugins)
    run_dir = Path(cfg.trainer.output_dir) / cfg.trainer.experiment_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    seed_everything(cfg.trainer.seed)
    pipeline = PIPELINES.get(cfg.trainer.pipeline)(cfg)
    ckpt = find_resume_checkpoint(cfg.trainer.resume, run_dir)
    ctx = build_context(cfg, run_dir, ckpt)
    if hasattr(pipeline, "setup"):  # pipeline-specific parts (an environment, ...) built from the context
        pipeline.setup(ctx)
    trainer = Trainer(ctx, pipeline)
    return trainer.fit(load_state(ckpt) if ckpt is not None else None)
