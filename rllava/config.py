"""Typed experiment config: dataclass sections loaded from YAML plus dotted overrides.

`load_config("exp.yaml", ["rollout.n=8"])` returns a validated `Config`. Unknown keys and
wrong types are errors that name the key (and the closest valid one). Derived values are
computed by functions, never written back into the config.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, reported with the key path that caused it."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A config value names a file or folder that is not there (still a FileNotFoundError for callers)."""


class MissingPackageError(ConfigError, ImportError):
    """A config value needs an optional package that is not installed; the message says how to get it."""


@dataclass
class DataConfig:
    train_files: str = ""  # comma-separated: parquet / json / jsonl / arrow / csv / save_to_disk folders / hub names / downloaded dataset repos; NAME@split picks a split
    val_files: str = ""  # held-out prompts for validation (same formats); empty = no validation
    train_weights: list[float] = field(default_factory=list)  # one per train_files entry: each epoch draws that share of its prompts from the entry (a small one repeats, a large one is subsampled); empty = every prompt once an epoch
    prompt_key: str = "prompt"  # row field with the question text (may contain `<image>` / `<video>` markers), or a list of chat messages (veRL's and TRL's conversational format)
    answer_key: str = "answer"  # row field with the reference answer, passed to reward functions
    answer_template: Optional[str] = None  # jinja: the reference answer rendered from the row instead, e.g. "{{ answer.split('####')[-1] | trim }}" (GSM8K) or "{{ solution | last_boxed }}" (MATH); it becomes the row's `answer`
    image_key: str = "images"  # row field with a list of images: paths (relative to the file), bytes or PIL
    video_key: str = "videos"  # row field with a list of videos (paths or frame lists)
    image_dir: Optional[str] = None  # relative image paths are resolved against this (default: the data file's folder)
    template: Optional[str] = None  # jinja template string or path to a .jinja file; gets the row as variables
    system_prompt: Optional[str] = None  # system message added before the user turn
    response_template: str = "{{ answer }}"  # SFT target and RL demonstration, rendered from the row (jinja)
    demo_key: str = "demo_turns"  # agentic SFT and agentic RL with algorithm.demonstrations: the row's demonstration, a list of assistant turn texts
    chat_template: Optional[str] = None  # override the processor's chat template (string or file)
    drop_solved: Optional[float] = None  # a prompt whose rollouts reach this mean accuracy in a step is left out from then on (Skywork-OR1, Polaris); null keeps all
    max_prompt_length: int = 1024  # prompts longer than this (in tokens, images included) are dropped with a warning
    min_pixels: int = 3136  # images smaller than this are upscaled (aspect kept) before the processor
    max_pixels: int = 200704  # images larger than this are downscaled (aspect kept) before the processor
    video_fps: float = 2.0  # frames sampled per second of a video file; a list of frames counts as a clip at this rate (the frame times the processor gets)
    max_frames: int = 8  # at most this many frames per video
    batch_size: int = 8  # prompts per training step
    val_batch_size: int = 64  # prompts per validation generate call
    max_val_samples: Optional[int] = None  # use only the first N validation prompts; null = all
    shuffle: bool = True  # reshuffle the training prompts every epoch (seeded)
    skip_bad_rows: bool = False  # drop rows with missing or broken fields (counted) instead of stopping with an error


@dataclass
class ModelConfig:
    path: str = ""  # local HF folder or hub name
    tokenizer_path: Optional[str] = None  # tokenizer/processor folder if not the model's
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16 (trained with a dynamic loss scale)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | flash_attention_3 | flex_attention, or a hub kernel (org/name); passed to from_pretrained
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about 30 % more compute
    freeze_vision_tower: bool = False  # train only the language model and the connector (Qwen-VL: its patch merger sits in the vision module and is frozen with it)
    lora_rank: int = 0  # 0 disables LoRA
    lora_alpha: int = 16  # LoRA scale is lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_target_modules: str = "all-linear"  # `all-linear` or comma-separated leaf names (q_proj,v_proj); language model only
    trust_remote_code: bool = False  # allow model code from the model folder


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"  # advantage estimator by registry name: grpo, rloo, reinforce_plus_plus, remax, opo, gpg, gae, ... (`rllava list`)
    norm_adv_by_std: bool = True  # False gives Dr.GRPO
    gamma: float = 1.0  # discount (gae, reinforce_plus_plus)
    lam: float = 1.0  # GAE lambda
    vapo_alpha: float = 0.05  # vapo_gae: the policy's lambda is 1 - 1/(vapo_alpha * response length)
    whiten_advantages: bool = True  # for gae / reinforce++
    grpo_epsilon: float = 1e-6  # added to the group std before dividing
    policy_loss: str = "ppo"  # policy loss by registry name: ppo, gspo, gmpo, clip_cov, kl_cov, cispo, sapo, sft, ... (`rllava list`)
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm
    clip_ratio_low: float = 0.2  # PPO clip: ratio kept within [1 - low, 1 + high]
    clip_ratio_high: float = 0.2  # > low gives DAPO clip-higher
    clip_ratio_c: Optional[float] = 3.0  # dual-clip constant for negative advantages; None disables
    tis_cap: Optional[float] = None  # rollout correction between the rollout engine's and the trainer's log-probs: the upper bound of the ratio; null = off
    tis_mode: str = "token_truncate"  # token_truncate (TIS: ratio clamped) | token_mask (IcePop: 0 outside the bounds) | sequence_truncate | sequence_mask (the sequence's ratio)
    tis_floor: float = 0.0  # the lower bound of the ratio (IcePop uses 0.5); 0 = none
    clip_cov_ratio: float = 0.0002  # Clip-Cov: share of tokens whose gradient is detached
    clip_cov_lb: float = 1.0  # Clip-Cov: covariance window, lower bound
    clip_cov_ub: float = 5.0  # Clip-Cov: covariance window, upper bound
    kl_cov_ratio: float = 0.0002  # KL-Cov: share of tokens (highest covariance) that get the KL penalty
    kl_cov_coef: float = 1.0  # KL-Cov: weight of that penalty
    sapo_tau_pos: float = 1.0  # SAPO: gate temperature for positive advantages
    sapo_tau_neg: float = 1.05  # SAPO: gate temperature for negative advantages
    kl_coef: float = 0.0  # 0 disables the reference pass
    kl_in: str = "loss"  # loss | reward
    kl_estimator: str = "k3"  # KL estimator by registry name: k1, k2, k3, abs, ... (`rllava list`)
    kl_ctrl: str = "fixed"  # fixed | adaptive (a controller other than fixed needs kl_in=reward)
    kl_target: float = 0.1  # adaptive KL controller: target KL
    kl_horizon: int = 10000  # adaptive KL controller: horizon in samples
    entropy_coef: float = 0.0  # entropy bonus weight (subtracted from the loss)
    group_filter: Optional[str] = None  # e.g. dapo_nonuniform
    filter_reward_low: float = 0.0  # reward_range filter: a group whose mean reward is <= low is dropped (all wrong)
    filter_reward_high: float = 1.0  # reward_range filter: a group whose mean reward is >= high is dropped (all right)
    max_filter_tries: int = 3  # dynamic sampling: extra rollout rounds at most per step
    reward_shaping: list[str] = field(default_factory=list)  # e.g. [overlong_penalty]
    overlong_buffer_len: int = 16  # overlong_penalty: tokens before the length limit (rollout.max_new_tokens; multi-turn: env.max_total_tokens) where the penalty ramps up
    overlong_penalty_factor: float = 1.0  # overlong_penalty: penalty at the length limit
    top_entropy_frac: float = 1.0  # share of RL tokens, highest entropy under the sampling policy, that carry the policy gradient (0.2: "Beyond the 80/20 rule"); 1 = all
    entropy_adv_coef: float = 0.0  # Cheng et al. 2025: advantage + min(coef * entropy, |advantage| / entropy_adv_kappa) on each token; 0 = off
    entropy_adv_kappa: float = 2.0  # the bonus is at most |advantage| / kappa (it never flips an advantage's sign)
    positive_nll_coef: float = 0.0  # VAPO's positive-example LM loss: coef * NLL (token mean) on rollouts whose reward >= positive_reward_min; 0 = off
    positive_reward_min: float = 1.0  # the reward that makes a rollout a positive example
    mask_truncated: bool = False  # DAPO overlong filtering: rollouts cut at the length limit train no token (their rewards still count in group statistics)
    demonstrations: Optional[str] = None  # the row's demonstration (data.response_template; agentic: data.demo_key turns) in RL: mix (LUFFY) | switch (HPT) | sft (CHORD) | hint (UFT)
    hpt_threshold: float = 0.0  # switch: a group whose mean rollout reward is <= this trains on its demonstration instead
    luffy_gamma: float = 0.1  # LUFFY: policy shaping f(p) = p / (p + gamma) on demonstration tokens
    srft_rl_coef: float = 0.1  # SRFT (policy_loss=srft): positive-advantage rollouts weigh srft_rl_coef * exp(s * H)
    srft_entropy_scale: float = 1.0  # SRFT: s in that weight; +1 weighs positives more at high entropy, -1 less, 0 constant (README: SFT-RL hybrids)
    sft_coef: float = 0.0  # weight c of the SFT term (mean demonstration NLL; the peak under a schedule)
    sft_mix: str = "add"  # add: L_RL + c * L_SFT | convex: (1 - c) * L_RL + c * L_SFT (CHORD)
    sft_token_weight: str = "none"  # per-token SFT weights: none | chord_phi (p * (1 - p), CHORD-phi) | srft (exp(-H))
    sft_coef_warmup_steps: int = 0  # CHORD-mu: sft_coef rises linearly from 0 over these steps
    sft_coef_final: Optional[float] = None  # CHORD-mu: then falls (cosine) to this; null keeps sft_coef
    sft_coef_decay_steps: int = 0  # CHORD-mu: steps of that fall
    hint_ratio_high: float = 0.95  # UFT: share of the demonstration given as a hint at the start (Binomial mean)
    hint_ratio_low: float = 0.05  # UFT: the share a cosine brings it down to over hint_steps; 0 after them
    hint_steps: int = 0  # UFT: steps with hints (required for demonstrations=hint)


@dataclass
class ActorConfig:
    strategy: str = "local"  # local | fsdp2
    lr: float = 1e-6  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    lr_scheduler: str = "constant"  # constant | cosine | linear
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 disables
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batch_size: int = 0  # sequences per optimizer step; 0 = the whole rollout batch
    micro_token_budget: int = 8192  # tokens per micro-batch: rows x the longest row, or with shared prompts each distinct prompt once + rows x the longest response
    share_prompt: bool = True  # run each distinct prompt once per micro-batch; its samples reuse its KV cache (exact)
    response_pass_tokens: int = 256  # shared prompts: what one more response pass costs, in tokens (kernel launches; sharded, the layers' gathers too); a group's responses split into passes of similar lengths where padding costs more. 0: a pass per length
    logprob_chunk_size: int = 512  # positions per LM-head chunk: ~6 [chunk, vocab] fp32 buffers live in backward
    master_weights_fp32: bool = True  # keep fp32 parameters and run the forward under autocast in model.dtype
    param_offload: bool = False  # fsdp2 on CUDA: parameter shards live in CPU memory between uses
    optimizer_offload: bool = False  # local: fp32 masters, grads and AdamW states in CPU memory; the device holds model.dtype weights
    optimizer: str = "adamw"  # adamw | adamw_8bit (bitsandbytes: 8-bit moments, 2 bytes a parameter instead of 8)
    skip_zero_advantage: bool = False  # leave out of the update's forward and backward (and of the old-log-prob pass, where the advantages need nothing from it) the rows whose advantage is 0 on every token (uniform GRPO groups): the same gradient, less compute; entropy and ratio metrics then cover the rows that ran. Needs a row_local policy loss and no entropy, KL-loss, SFT or VAPO NLL term


@dataclass
class CriticConfig:
    model_path: Optional[str] = None  # default: the actor's model
    lr: float = 1e-5  # critic learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    max_grad_norm: float = 1.0  # clip the critic's gradient norm; 0 disables
    optimizer: str = "adamw"  # adamw | adamw_8bit, as actor.optimizer
    value_clip: Optional[float] = 0.5  # clip new values to old +- this (PPO value clipping); null disables
    ppo_epochs: int = 1  # passes over each rollout batch
    pretrain_steps: int = 0  # the first this many steps train the critic alone, the actor waits (veRL's trainer.critic_warmup)


@dataclass
class ReferenceConfig:
    model_path: Optional[str] = None  # default: the actor's initial weights (or the LoRA base)
    sync_steps: int = 0  # every this many steps the reference moves to the policy (TR-DPO, TRL's sync_ref_model; ProRL's resets); 0 = never
    sync_alpha: float = 1.0  # at a sync: ref <- alpha * policy + (1 - alpha) * ref; 1 = a reset to the policy


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    n: int = 4  # samples per prompt (the group size)
    temperature: float = 1.0  # sampling temperature; log-probs are taken at the same temperature
    top_p: float = 1.0  # nucleus sampling; 1 disables
    top_k: int = 0  # top-k sampling; 0 disables
    max_new_tokens: int = 128  # response length limit (per turn in agentic episodes)
    stop: list[str] = field(default_factory=list)  # strings that end a response (kept in it; a finished response, like EOS), e.g. ["</tool_call>"]
    val_temperature: float = 0.0  # greedy
    val_n: int = 1  # samples per validation prompt; > 1 adds val/pass@k (k = 1, 2, 4, ..., val_n)
    batch_size: int = 0  # sequences generated at once; 0 = all
    generate_kwargs: dict[str, Any] = field(default_factory=dict)  # hf engine: extra `generate` arguments, e.g. {cache_implementation: static}; a checkpoint's own sampling settings (repetition_penalty...) apply only if named here
    share_prefill: bool = True  # hf engine: prefill each distinct prompt (and its images) once for its n samples
    gpu_memory_utilization: float = 0.5  # vLLM: share of GPU memory for its weights and KV cache
    enforce_eager: bool = False  # vLLM: no CUDA graphs or torch.compile (faster start; required on CPU)
    sleep_level: int = 1  # vLLM between rollouts: 1 keeps weights in CPU memory, 2 drops them (re-synced on wake)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments, e.g. max_model_len


DEFAULT_JUDGE_TEMPLATE = ("Question: {{ prompt }}\nReference answer: {{ answer }}\nResponse: {{ response }}\n"
                          "Does the response reach the reference answer? Reply with yes or no.")


@dataclass
class RewardConfig:
    functions: dict[str, float] = field(default_factory=lambda: {"math": 1.0})  # name or file.py:fn -> weight
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)  # rows of these data sources get their own functions (instead of `functions`): {counting: {count: 1.0}, geometry3k: {math: 1.0, format: 0.1}}
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)  # keyword arguments per function, over the row's fields: {detection: {iou_threshold: 0.75}, iou: {box_frame: input}}
    on_error: float = 0.0  # score given when a reward function raises or returns NaN
    accuracy_key: str = "accuracy"  # logged as accuracy when a reward returns it
    model: Optional[str] = None  # a reward model folder: a sequence classifier (one label) or an LM judge (model_type); its score of (prompt, response), times model_weight, is added
    model_weight: float = 1.0  # weight of the reward model's score in the reward
    model_batch_size: int = 16  # responses per reward-model forward
    model_max_length: int = 2048  # reward-model input tokens at most (cut from the left: the response's end stays; a vision-language judge reads rows with images whole)
    model_device: Optional[str] = None  # where the reward model runs: default the trainer's device; e.g. cpu, cuda:1
    model_type: Optional[str] = None  # classifier (one-label sequence classifier) | judge (an LM asked judge_template); null: from the folder's architecture
    judge_template: str = DEFAULT_JUDGE_TEMPLATE  # judge's user message (jinja or a .jinja file): prompt, response and the row's fields
    judge_images: bool = True  # a vision-language judge sees the prompt's images too
    judge_labels: dict[str, float] = field(default_factory=lambda: {"yes": 1.0, "no": 0.0})  # judge's one-token verdicts -> score; the reward is their expected score under its next-token probabilities
    workers: int = 0  # 0: score in the trainer's process; N: in N worker processes (parallel; a hung reward can be stopped)
    timeout_s: Optional[float] = None  # wall time per response in a worker; over it: killed, scored on_error, counted (needs workers >= 1)


@dataclass
class EnvConfig:
    name: Optional[str] = None  # environment registry name ("tools"); used by trainer.pipeline=agentic
    tools: list[str] = field(default_factory=list)  # tool names offered to the policy, e.g. [zoom, python, search] (`rllava list`)
    max_turns: int = 4  # policy turns per episode at most
    max_total_tokens: int = 2048  # response tokens of all turns (generated + observations)
    max_images: int = 8  # images per episode at most (prompt + tool outputs)
    call_format: str = "xml"  # xml: <tool_call>{"name": ..., "arguments": {...}}</tool_call>; json; tags: <search>query</search>
    observation_role: str = "user"  # chat role of observation turns ("user" works with every template; "tool" where supported); raw: the text goes on in the assistant's own turn (Search-R1)
    observation_template: str = "{text}"  # how an observation's text is shown, e.g. "\n<information>{text}</information>\n"
    tool_reward: float = 0.0  # per valid tool call (turn reward)
    invalid_penalty: float = 0.1  # per malformed call
    reward_weights: dict[str, float] = field(default_factory=lambda: {"answer": 1.0, "format": 0.0, "tool": 1.0})  # episode reward = answer * w.answer + format * w.format + min(sum(turn rewards), w.tool_cap) * w.tool (tool_cap optional)
    tool_timeout_s: float = 5.0  # python tool: wall-time limit per call
    tool_memory_mb: int = 512  # python tool: address-space limit per call
    corpus_path: Optional[str] = None  # search tool: .jsonl {id, title, text} or one passage per line
    zoom_box_frame: str = "pixels"  # zoom tool: how the model writes bbox, as the box rewards' box_frame: pixels (of the original image) | input (pixels of the image the model sees, after resizing: Qwen2.5-VL) | norm1000 (0-1000: Qwen2-VL, Qwen3-VL) | norm1 (0-1)
    workers: int = 8  # environments stepped at once, in threads (tool calls run in parallel); 1 for an environment that is not thread-safe


@dataclass
class TrainerConfig:
    pipeline: str = "rlvr"  # rlvr | sft | agentic | agentic_sft
    experiment_name: str = "default"  # the run folder is output_dir/experiment_name
    output_dir: str = "outputs"  # parent folder of run folders
    total_steps: int = 100  # training steps (one prompt batch each)
    total_epochs: int = 1000  # steps stop at whichever comes first
    seed: int = 42  # seeds data order, sampling and initialisation
    device: str = "auto"  # auto | cpu | cuda
    val_freq: int = 0  # steps between validations; 0 = only at the end
    val_before_train: bool = True  # validate once at step 0
    save_freq: int = 0  # steps between checkpoints; 0 = only at the end
    save_every_min: Optional[float] = None  # also checkpoint when this many minutes have passed since the last one
    keep_last: int = 2  # checkpoints kept, >= 1 (older ones are deleted)
    export_dtype: str = "auto"  # dtype of each checkpoint's HF folder: auto (the dtype model.path's config names, e.g. bfloat16 for Qwen, unless the trained weights are narrower) | float32 | bfloat16 | float16. Resume reads the engine state, which keeps fp32 masters
    keep_best: bool = True  # also keep the best checkpoint by trainer.best_metric, among those saved at a validation step
    best_metric: str = "val/accuracy"  # the validation metric that picks the best checkpoint (higher is better), e.g. val/pass@4 or val/<source>/accuracy; val/reward where a run has no accuracy
    resume: str = "auto"  # auto | none | path to a checkpoint folder
    loggers: list[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])  # console | jsonl | tensorboard | wandb
    log_samples: int = 4  # samples written to samples.jsonl per validation
    progress_bar: bool = True  # tqdm bar on rank 0
    profile_steps: list[int] = field(default_factory=list)  # steps run under torch.profiler, e.g. [3]: run_dir/profile/step_N/rank_R.trace.json (Perfetto, chrome://tracing) and rank_R.txt (the costliest ops)


@dataclass
class Config:
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# ---------------------------------------------------------------- building from dicts


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against type hint `tp`, converting only the safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # allow `rollout.tools=a,b` on the command line; `profile_steps=1,2` holds numbers
            value = [v if item_tp is str else _parse_value(v) for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {_coerce(k, k_tp, path): _coerce(v, v_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):  # nan passes every range check
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, bool, str) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _field_type(keys: list[str], root: type) -> Any:
    """The type hint of the setting at dotted `keys` under dataclass `root`; None where the keys leave the dataclasses
    (an unknown key, or one inside a mapping setting such as reward.kwargs)."""
    tp: Any = root
    for k in keys:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if k not in hints:
            return None
        tp = hints[k]
    return tp


def _is_text(tp: Any) -> bool:
    """A str or Optional[str] setting."""
    if tp is str:
        return True
    return typing.get_origin(tp) in (Union, types.UnionType) and set(typing.get_args(tp)) == {str, type(None)}


NULL_WORDS = ("null", "Null", "NULL", "~")


def _parse_value(raw: str, tp: Any = None) -> Any:
    """A command-line value as YAML (numbers, lists, mappings), else the raw string (e.g. a jinja template).

    For a text setting (`tp` str or Optional[str]) the text is kept as typed: YAML 1.1 would read 0715 as 461 and
    1.10 as 1.1, and cut `Be brief #nofluff` at the comment. A quoted value still loses its quotes (YAML's
    unquoting, as before), and null still clears an Optional[str]."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if tp is None or not _is_text(tp) or isinstance(value, (list, dict)):
        return value  # a list or mapping for a text setting stays an error that names the key, as before
    if raw.strip() in NULL_WORDS and tp is not str:
        return None
    if isinstance(value, str) and raw.lstrip().startswith(("'", '"')):
        return value
    return raw


def parse_overrides(overrides: list[str], root: type | None = None) -> dict:
    """`["rollout.n=8", "reward.functions={count: 1.0}"]` -> nested dict; values parsed as YAML, except that the
    value of a text setting of `root` (default: Config) is kept as typed (see `_parse_value`)."""
    root = root or Config
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        _set_dotted(tree, key, _parse_value(raw, _field_type(key.split("."), root)))
    return tree


def _merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, section by section. A reward set (`reward.functions`, a source's set in
    `reward.by_source`) is replaced whole: its weights are one choice, not a merge of two."""
    out = dict(base)
    for k, v in extra.items():
        if k == "by_source" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k != "functions":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's content. A missing, unreadable, non-UTF-8 or malformed file is a ConfigError that names it (and
    for a YAML error the line and column), not a traceback from inside the parser."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{what} {str(path)!r} not found")
    if p.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML {what}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}" + (f" ({context})" if context else "")) from None


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_module_name(plugin: str) -> bool:
    """Whether a `plugins` entry names a module (`my_pkg.rewards`) rather than a file (`rewards.py`, `lib/r.py`)."""
    return _MODULE_NAME.fullmatch(plugin) is not None and not plugin.endswith(".py")


def _plugin_ref(plugin: str, base_dir: Path) -> str:
    """A config file's plugin entry: a file's absolute path (a relative one is taken from the config file's folder
    unless it exists from here), a module name as it is."""
    if is_module_name(plugin) and not Path(plugin).is_file() and not (base_dir / plugin).is_file():
        return plugin
    if not Path(plugin).is_absolute() and not Path(plugin).exists():
        return str((base_dir / plugin).resolve())
    return str(Path(plugin).resolve())


def _read_yaml(path: str, seen: tuple = ()) -> dict:
    """A YAML file as a dict; `base: other.yaml` (relative to this file) is read first and overlaid."""
    p = Path(path)
    if p.resolve() in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    tree = read_yaml_file(p) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base_dir = p.resolve().parent
    plugins = tree.get("plugins") or []
    if isinstance(plugins, str):  # one plugin (else its characters would be taken one by one)
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(pl, str) and pl for pl in plugins):
        raise ConfigError(f"{path}: plugins must be a list of .py files or module names, got {plugins!r}")
    tree["plugins"] = [_plugin_ref(pl, base_dir) for pl in plugins]
    base = tree.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of one YAML file, got {base!r}")
    if base:
        parent = _read_yaml(str(base_dir / base), seen + (p.resolve(),))
        plugins = parent.get("plugins", []) + [pl for pl in tree["plugins"] if pl not in parent.get("plugins", [])]
        tree = {**_merge(parent, tree), "plugins": plugins}
    return tree


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply dotted overrides, validate; plugin paths become absolute."""
    tree: dict = _read_yaml(path) if path else {}
    extra = parse_overrides(overrides or [])
    given = extra.get("plugins")
    if isinstance(given, (str, list)):  # files named on the command line are taken from here: absolute in config.yaml
        given = [v for v in given.split(",") if v] if isinstance(given, str) else given
        extra["plugins"] = [_plugin_ref(pl, Path.cwd()) if isinstance(pl, str) and pl else pl for pl in given]
    tree = _merge(tree, extra)
    try:
        cfg = _build(Config, tree)
        check_ranges(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{path or '<overrides>'}: {e}") from None


# Numeric settings with a valid range: (section, key, lowest allowed, whether the lowest itself is allowed).
RANGES = [("data", "batch_size", 1, True), ("rollout", "n", 1, True), ("rollout", "max_new_tokens", 1, True),
          ("rollout", "temperature", 0.0, True), ("rollout", "top_p", 0.0, False), ("rollout", "top_k", 0, True),
          ("rollout", "val_n", 1, True), ("actor", "lr", 0.0, True), ("critic", "lr", 0.0, True),
          ("actor", "ppo_epochs", 1, True), ("critic", "ppo_epochs", 1, True), ("actor", "mini_batch_size", 0, True),
          ("actor", "micro_token_budget", 1, True), ("actor", "logprob_chunk_size", 1, True),
          ("actor", "response_pass_tokens", 0, True), ("trainer", "total_steps", 0, True), ("env", "max_turns", 1, True), ("env", "workers", 1, True),
          ("data", "video_fps", 0.0, False), ("data", "max_frames", 1, True), ("algorithm", "clip_ratio_low", 0.0, True), ("algorithm", "clip_ratio_high", 0.0, True),
          ("reference", "sync_steps", 0, True), ("critic", "pretrain_steps", 0, True), ("trainer", "keep_last", 1, True),
          ("trainer", "total_epochs", 1, True), ("trainer", "val_freq", 0, True), ("trainer", "save_freq", 0, True),
          ("trainer", "log_samples", 0, True), ("data", "val_batch_size", 1, True), ("rollout", "val_temperature", 0.0, True),
          ("rollout", "batch_size", 0, True), ("actor", "warmup_steps", 0, True), ("critic", "warmup_steps", 0, True),
          ("reward", "model_batch_size", 1, True)]


LR_SCHEDULERS = ("constant", "cosine", "linear")  # the decays of engines.local.lr_lambda (the fsdp2 engine's too)


def check_choice(setting: str, value: str, choices: typing.Iterable[str]) -> None:
    """`value` is one of `choices`: else a ConfigError naming `setting`, the choices and the closest one."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{setting}={value!r} is not one of {', '.join(choices)}{hint}")


def check_ranges(cfg: Config) -> None:
    """Reject out-of-range numbers at load time, naming the key (deep inside they fail obscurely or silently)."""
    for section, key, low, inclusive in RANGES:
        value = getattr(getattr(cfg, section), key)
        if value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{section}.{key}={value!r}: must be {bound}")
    if cfg.rollout.top_p > 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p!r}: must be in (0, 1]")
    check_choice("actor.lr_scheduler", cfg.actor.lr_scheduler, LR_SCHEDULERS)
    betas = cfg.actor.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):  # AdamW reads two, each in [0, 1)
        raise ConfigError(f"actor.betas={betas!r}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
    if cfg.data.max_val_samples is not None and cfg.data.max_val_samples < 1:  # a slice end: -1 drops the last row
        raise ConfigError(f"data.max_val_samples={cfg.data.max_val_samples!r}: must be >= 1, or null for all "
                          "(data.val_files= validates on none)")
    tc = cfg.trainer
    if tc.save_every_min is not None and tc.save_every_min < 0:
        raise ConfigError(f"trainer.save_every_min={tc.save_every_min!r}: must be >= 0, or null")
    if any(not 1 <= s <= tc.total_steps for s in tc.profile_steps):  # a step never reached would profile nothing
        raise ConfigError(f"trainer.profile_steps={tc.profile_steps!r}: steps run from 1 to trainer.total_steps="
                          f"{tc.total_steps}")
    alg = cfg.algorithm
    if alg.kl_in not in ("loss", "reward"):
        raise ConfigError(f"algorithm.kl_in={alg.kl_in!r}: must be loss or reward")
    if alg.kl_ctrl != "fixed" and alg.kl_in != "reward":
        raise ConfigError(f"algorithm.kl_ctrl={alg.kl_ctrl} moves the KL penalty in the reward: set algorithm.kl_in="
                          "reward (with kl_in=loss the coefficient stays algorithm.kl_coef)")
    if cfg.data.drop_solved is not None and not 0 < cfg.data.drop_solved <= 1:
        raise ConfigError(f"data.drop_solved={cfg.data.drop_solved!r}: must be in (0, 1]")
    if cfg.reference.sync_steps:
        if not 0 < cfg.reference.sync_alpha <= 1:
            raise ConfigError(f"reference.sync_alpha={cfg.reference.sync_alpha!r}: must be in (0, 1]")
        if alg.kl_coef <= 0:
            raise ConfigError("reference.sync_steps moves the KL reference, but algorithm.kl_coef=0: there is none")
        if cfg.model.lora_rank and not cfg.reference.model_path:
            raise ConfigError("reference.sync_steps cannot move the LoRA reference (the frozen base the adapters sit on); "
                              "set reference.model_path to load a separate reference model")
    if alg.entropy_adv_coef < 0 or alg.entropy_adv_kappa <= 1:
        raise ConfigError(f"algorithm.entropy_adv_coef={alg.entropy_adv_coef!r} must be >= 0 and entropy_adv_kappa="
                          f"{alg.entropy_adv_kappa!r} > 1 (so the bonus never reverses an advantage)")
    if alg.positive_nll_coef < 0:
        raise ConfigError(f"algorithm.positive_nll_coef={alg.positive_nll_coef!r}: must be >= 0")
    if alg.vapo_alpha <= 0:
        raise ConfigError(f"algorithm.vapo_alpha={alg.vapo_alpha!r}: must be > 0")
    if not 0 < alg.top_entropy_frac <= 1:
        raise ConfigError(f"algorithm.top_entropy_frac={alg.top_entropy_frac!r}: must be in (0, 1]")
    if alg.tis_cap is not None and not 0 <= alg.tis_floor < alg.tis_cap:
        raise ConfigError(f"algorithm.tis_floor={alg.tis_floor!r} and tis_cap={alg.tis_cap!r}: need 0 <= tis_floor < tis_cap")
    if alg.clip_ratio_c is not None and alg.clip_ratio_c <= 1:
        raise ConfigError(f"algorithm.clip_ratio_c={alg.clip_ratio_c!r}: must be > 1 (dual clip), or null to disable it")
    if not cfg.reward.functions and not cfg.reward.by_source and not cfg.reward.model:
        raise ConfigError("reward.functions is empty and there is no reward.model: name at least one reward function")
    for source, weights in cfg.reward.by_source.items():
        if not isinstance(weights, dict) or not weights:
            raise ConfigError(f"reward.by_source.{source}={weights!r}: give reward functions with weights, "
                              f"e.g. {{count: 1.0}}")
    from rllava.envs.episode_reward import DEFAULT_WEIGHTS  # light; envs/ sits below config
    from rllava.envs.zoom_tool import ZOOM_BOX_FRAMES

    unknown = sorted(set(cfg.env.reward_weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ConfigError(f"env.reward_weights: unknown key(s) {unknown}; valid: {sorted(DEFAULT_WEIGHTS)}")
    check_reward_kwargs(cfg.reward.functions, cfg.reward.kwargs, cfg.reward.by_source)
    if "{text}" not in cfg.env.observation_template:
        raise ConfigError(f"env.observation_template={cfg.env.observation_template!r} must hold {{text}}")
    check_choice("env.zoom_box_frame", cfg.env.zoom_box_frame, ZOOM_BOX_FRAMES)
    if any(not isinstance(x, str) or not x for x in cfg.rollout.stop):
        raise ConfigError(f"rollout.stop={cfg.rollout.stop!r}: give non-empty strings")
    for key in ("gpu_memory_utilization", "enforce_eager"):  # vllm.LLM arguments with a setting of their own
        if key in (cfg.rollout.vllm_kwargs or {}):
            raise ConfigError(f"rollout.vllm_kwargs.{key}: set rollout.{key} instead")
    if cfg.reward.model_type not in (None, "classifier", "judge"):
        raise ConfigError(f"reward.model_type={cfg.reward.model_type!r}: must be classifier, judge or null (from the folder)")
    labels = cfg.reward.judge_labels
    if len(labels) < 2 or not all(math.isfinite(v) for v in labels.values()):
        raise ConfigError(f"reward.judge_labels={labels!r}: give two or more verdicts with finite scores, e.g. {{yes: 1, no: 0}}")
    if cfg.reward.workers < 0:
        raise ConfigError(f"reward.workers={cfg.reward.workers!r}: must be >= 0")
    if cfg.reward.timeout_s is not None:
        if cfg.reward.timeout_s <= 0:
            raise ConfigError(f"reward.timeout_s={cfg.reward.timeout_s!r}: must be > 0")
        if cfg.reward.workers == 0:
            raise ConfigError("reward.timeout_s needs reward.workers >= 1: a reward that hangs can only be "
                              "stopped in a process of its own")


def reward_names(functions: dict[str, float], by_source: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Every reward function named by `functions` and the per-source sets, each once, in order of appearance."""
    names = dict.fromkeys(functions)
    for weights in (by_source or {}).values():
        names.update(dict.fromkeys(weights))
    return list(names)


def check_reward_kwargs(functions: dict[str, float], kwargs: dict[str, dict] | None,
                        by_source: dict[str, dict[str, float]] | None = None) -> None:
    """`reward.kwargs` may only name functions of `reward.functions` or `reward.by_source`."""
    names = reward_names(functions, by_source)
    unknown = sorted(set(kwargs or {}) - set(names))
    if unknown:
        where = "reward.functions or reward.by_source" if by_source else "reward.functions"
        raise ConfigError(f"reward.kwargs names {unknown}, which {where} does not: {sorted(names)}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def import_plugins(paths: list[str]) -> None:
    """Import user files and modules so their `@REGISTRY.register` decorators run."""
    for i, plugin in enumerate(paths):
        p = Path(plugin)
        if is_module_name(plugin) and not p.is_file():
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:  # the plugin itself, not a module it imports, is missing
                if e.name is None or not (plugin == e.name or plugin.startswith(e.name + ".")):
                    raise
                raise ConfigError(f"plugin {plugin!r} is neither a file nor an importable module (not installed "
                                  "nor on PYTHONPATH)") from None
            continue
        if not p.exists():
            raise ConfigError(f"plugin file {plugin!r} not found")
        if p.is_dir():
            raise ConfigError(f"plugin {plugin!r} is a folder: give a .py file, or a module name to import")
        name = f"rllava_plugin_{i}_{p.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, p)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
