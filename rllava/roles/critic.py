"""The critic: a value model (the policy's architecture with a scalar head) for PPO with GAE."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from rllava.algorithms import rl_token_mask
from rllava.config import Config
from rllava.data.types import Batch, PromptShare
from rllava.engines import distributed as du
from rllava.models.logprobs import response_hidden_states
from rllava.roles.actor import budget_shares_prompts, forward_inputs


class ValueModel(nn.Module):
    """Backbone hidden state at each position that predicts a response token -> a scalar value."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # start from V = 0: no bias on early advantages
        nn.init.zeros_(self.value_head.bias)

    def forward(self, model_inputs: dict, response_width: int, share: PromptShare | None = None) -> torch.Tensor:
        """[B, T] values V(s_t): the hidden state at each position that predicts a response token."""
        h = response_hidden_states(self.backbone, model_inputs, response_width, share)
        # A fresh tensor, not a view: FSDP2 hooks a unit's output for its backward, and warns on views.
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float().clone()


class _NoLMHead(nn.Module):
    """Stands where a value model's backbone had its untied LM head: the critic reads hidden states only."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("the critic's backbone has no LM head (dropped at build: a value model never calls it)")


def drop_lm_head(model: nn.Module) -> int:
    """Replace `model`'s untied output layer by a stub; the number of parameters freed (0 when tied or absent).

    A value model reads the backbone's last hidden state, so the LM head is dead weight: at Qwen2.5-VL-7B's
    152,064 x 3,584 it is 545 M parameters, 2.2 GB as fp32 master weights. A tied head is the input embedding,
    which the backbone still needs.
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if weight is None:
        return 0
    embed = model.get_input_embeddings()
    if embed is not None and getattr(embed, "weight", None) is weight:
        return 0
    for name, module in model.named_modules():
        if module is head:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, _NoLMHead())
            return sum(p.numel() for p in head.parameters())
    return 0


def hidden_size_of(model: nn.Module) -> int:
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return text.hidden_size


class Critic:
    """Trained with the actor's strategy (sharded under fsdp2), under the same rules: global loss
    denominators and as many micro-batches on every rank."""

    def __init__(self, value_model: ValueModel, engine, cfg: Config):
        self.model = value_model
        self.engine = engine
        self.cfg = cfg

    @classmethod
    def build(cls, cfg: Config, device: torch.device, total_steps: int,
              load_device: torch.device | None = None) -> Critic:
        """`load_device`: where the weights are loaded before the engine places them (a sharding engine: the CPU)."""
        from rllava.engines import TRAIN_ENGINES
        from rllava.models.load import load_model_and_processor
        from rllava.pipelines.run import sharded_vlm_kwargs, training_model_config

        load_device = load_device or device
        mcfg = dataclasses.replace(training_model_config(cfg, cfg.critic.model_path), lora_rank=0)
        backbone, processor = load_model_and_processor(mcfg, device=load_device)
        drop_lm_head(backbone)
        model = ValueModel(backbone, hidden_size_of(backbone)).to(load_device)
        c = cfg.critic
        sharded = bool(TRAIN_ENGINES.entry(cfg.actor.strategy).meta.get("distributed"))
        engine = TRAIN_ENGINES.get(cfg.actor.strategy)(
            model, lr=c.lr, weight_decay=c.weight_decay, warmup_steps=c.warmup_steps, total_steps=total_steps * c.ppo_epochs,
            max_grad_norm=c.max_grad_norm, compute_dtype=cfg.model.dtype, device=device,
            optimizer_offload=cfg.actor.optimizer_offload,  # as the actor's: also what moves it to the device
            optimizer=c.optimizer, **sharded_vlm_kwargs(sharded, processor))
        return cls(model, engine, cfg)  # on resume, `load` restores weights and optimizer

    def save(self, folder: Path) -> None:
        self.engine.save(folder)

    def load(self, folder: Path) -> None:
        self.engine.load(folder)

    @torch.no_grad()
    def values(self, batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.responses.shape, dtype=torch.float32)
        share_prompts = self.cfg.actor.share_prompt
        groups = batch.token_budget_groups(self.cfg.actor.micro_token_budget,
                                           budget_shares_prompts(self.cfg, self.model.backbone, training=False))
        with self.engine.compute(train=False):
            for rows, real in du.pad_to_common_length(groups):
                micro = batch.select(rows)
                inputs, share = forward_inputs(self.model.backbone, micro, self.engine.device, share_prompts,
                                               sync_ranks=True, pass_tokens=self.cfg.actor.response_pass_tokens)
                v = self.model(inputs, micro.response_width, share)
                if real:
                    out[rows, : v.shape[1]] = v.cpu()
        return out * batch.response_mask

    def update(self, batch: Batch, seed: int = 0) -> dict[str, float]:
        """Clipped value regression toward the returns (token-mean over the response, over all ranks). Only
        the tokens RL trains are regressed: SFT-only demonstration tokens have no return (it is 0 there)."""
        clip = self.cfg.critic.value_clip
        sums: dict[str, float] = defaultdict(float)
        n = 0

        def value_mask(b: Batch) -> torch.Tensor:
            return rl_token_mask(b.response_mask, b.is_expert, b.hint_len, self.cfg.algorithm.demonstrations)

        total_tokens = max(1.0, du.all_reduce_sum(value_mask(batch).sum()))
        share_prompts = self.cfg.actor.share_prompt
        budget_shares = budget_shares_prompts(self.cfg, self.model.backbone, training=True)
        micros = du.pad_to_common_length(batch.split_by_tokens(self.cfg.actor.micro_token_budget, budget_shares))
        for _ in range(self.cfg.critic.ppo_epochs):
            value_loss = 0.0
            with self.engine.compute(train=True):
                for micro, real in micros:
                    m = micro.to(self.engine.device)
                    inputs, share = forward_inputs(self.model.backbone, m, self.engine.device, share_prompts,
                                                   sync_ranks=True, pass_tokens=self.cfg.actor.response_pass_tokens)
                    v = self.model(inputs, m.response_width, share)
                    loss_tok = (v - m.returns) ** 2
                    if clip is not None:
                        v_clipped = m.values + (v - m.values).clamp(-clip, clip)
                        loss_tok = torch.maximum(loss_tok, (v_clipped - m.returns) ** 2)
                    loss = 0.5 * (loss_tok * value_mask(m)).sum() / total_tokens * float(real)
                    self.engine.backward(loss)
                    value_loss += float(loss.detach())
            sums["critic/value_loss"] += du.all_reduce_sum(value_loss)
            for k, v in self.engine.step().items():
                sums[f"critic/{k}"] += v
            n += 1
        return {k: v / n for k, v in sums.items()}
