"""Typed experiment config: dataclass sections loaded from YAML plus dotted overrides.

`load_config("exp.yaml", ["rollout.n=8"])` returns a validated `Config`. Unknown keys and
wrong types are errors that name the key (and the closest valid one). Derived values are
computed by functions, never written back into the config.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, reported with the key path that caused it."""


@dataclass
class DataConfig:
    train_files: str = ""  # comma-separated: parquet / json / jsonl / arrow / load_from_disk folders / hub names
    val_files: str = ""
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    image_key: str = "images"
    video_key: str = "videos"
    image_dir: Optional[str] = None  # relative image paths are resolved against this (default: the data file's folder)
    template: Optional[str] = None  # jinja template string or path to a .jinja file; gets the row as variables
    system_prompt: Optional[str] = None
    response_template: str = "{{ answer }}"  # SFT target, rendered from the row (jinja)
    demo_key: str = "demo_turns"  # agentic SFT: the row's demonstration, a list of assistant turn texts
    chat_template: Optional[str] = None  # override the processor's chat template (string or file)
    max_prompt_length: int = 1024
    min_pixels: int = 3136
    max_pixels: int = 200704
    video_fps: float = 2.0
    max_frames: int = 8
    batch_size: int = 8  # prompts per training step
    val_batch_size: int = 64
    max_val_samples: Optional[int] = None
    shuffle: bool = True
    skip_bad_rows: bool = False


@dataclass
class ModelConfig:
    path: str = ""  # local HF folder or hub name
    tokenizer_path: Optional[str] = None
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = False
    lora_rank: int = 0  # 0 disables LoRA
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    trust_remote_code: bool = False


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True  # False gives Dr.GRPO
    gamma: float = 1.0
    lam: float = 1.0
    whiten_advantages: bool = True  # for gae / reinforce++
    grpo_epsilon: float = 1e-6
    policy_loss: str = "ppo"
    loss_agg_mode: str = "token-mean"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2  # > low gives DAPO clip-higher
    clip_ratio_c: Optional[float] = 3.0  # dual-clip constant for negative advantages; None disables
    tis_cap: Optional[float] = None  # truncated importance sampling between rollout and training log-probs
    clip_cov_ratio: float = 0.0002
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.0002
    kl_cov_coef: float = 1.0
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    kl_coef: float = 0.0  # 0 disables the reference pass
    kl_in: str = "loss"  # loss | reward
    kl_estimator: str = "k3"
    kl_ctrl: str = "fixed"  # fixed | adaptive
    kl_target: float = 0.1
    kl_horizon: int = 10000
    entropy_coef: float = 0.0
    group_filter: Optional[str] = None  # e.g. dapo_nonuniform
    filter_reward_low: float = 0.0
    filter_reward_high: float = 1.0
    max_filter_tries: int = 3
    reward_shaping: list[str] = field(default_factory=list)  # e.g. [overlong_penalty]
    overlong_buffer_len: int = 16
    overlong_penalty_factor: float = 1.0
    sft_coef: float = 0.0  # weight of an SFT term in hybrid losses


@dataclass
class ActorConfig:
    strategy: str = "local"  # local | fsdp2
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_scheduler: str = "constant"  # constant | cosine | linear
    max_grad_norm: float = 1.0
    ppo_epochs: int = 1
    mini_batch_size: int = 0  # sequences per optimizer step; 0 = the whole rollout batch
    micro_token_budget: int = 8192  # tokens per micro-batch (prompt + response, padded)
    logprob_chunk_size: int = 512  # positions per LM-head chunk: ~6 [chunk, vocab] fp32 buffers live in backward
    master_weights_fp32: bool = True
    optimizer_offload: bool = False
    param_offload: bool = False


@dataclass
class CriticConfig:
    model_path: Optional[str] = None  # default: the actor's model
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    value_clip: Optional[float] = 0.5
    ppo_epochs: int = 1


@dataclass
class ReferenceConfig:
    model_path: Optional[str] = None  # default: the actor's initial weights (or the LoRA base)


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    val_temperature: float = 0.0  # greedy
    val_n: int = 1
    batch_size: int = 0  # sequences generated at once; 0 = all
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    sleep_level: int = 1  # vLLM between rollouts: 1 keeps weights in CPU memory, 2 drops them (re-synced on wake)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments, e.g. max_model_len


@dataclass
class RewardConfig:
    functions: dict[str, float] = field(default_factory=lambda: {"math": 1.0})  # name or file.py:fn -> weight
    on_error: float = 0.0  # score given when a reward function raises or returns NaN
    accuracy_key: str = "accuracy"  # logged as accuracy when a reward returns it


@dataclass
class EnvConfig:
    name: Optional[str] = None  # environment registry name ("tools"); used by trainer.pipeline=agentic
    tools: list[str] = field(default_factory=list)
    max_turns: int = 4
    max_total_tokens: int = 2048  # response tokens of all turns (generated + observations)
    max_images: int = 8
    call_format: str = "xml"  # <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    observation_role: str = "user"  # chat role of observation turns ("user" works with every template; "tool" where supported)
    tool_reward: float = 0.0  # per valid tool call (turn reward)
    invalid_penalty: float = 0.1  # per malformed call
    reward_weights: dict[str, float] = field(default_factory=lambda: {"answer": 1.0, "format": 0.0, "tool": 1.0})
    tool_timeout_s: float = 5.0
    tool_memory_mb: int = 512
    corpus_path: Optional[str] = None


@dataclass
class TrainerConfig:
    pipeline: str = "rlvr"  # rlvr | sft | agentic | agentic_sft
    experiment_name: str = "default"
    output_dir: str = "outputs"
    total_steps: int = 100
    total_epochs: int = 1000  # steps stop at whichever comes first
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    val_freq: int = 0  # steps between validations; 0 = only at the end
    val_before_train: bool = True
    save_freq: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    keep_best: bool = True
    resume: str = "auto"  # auto | none | path to a checkpoint folder
    loggers: list[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])
    log_samples: int = 4
    progress_bar: bool = True


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
        if isinstance(value, str):  # allow `rollout.tools=a,b` on the command line
            value = [v for v in value.split(",") if v]
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
            return float(value)
        except ValueError:
            pass
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


def _parse_value(raw: str) -> Any:
    """A command-line value as YAML (numbers, lists, mappings), else the raw string (e.g. a jinja template)."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_overrides(overrides: list[str]) -> dict:
    """`["rollout.n=8", "reward.functions={count: 1.0}"]` -> nested dict; values parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_value(raw))
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "functions":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: str, seen: tuple = ()) -> dict:
    """A YAML file as a dict; `base: other.yaml` (relative to this file) is read first and overlaid."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {path!r} not found")
    if p.resolve() in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    tree = yaml.safe_load(p.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base_dir = p.resolve().parent
    tree["plugins"] = [str((base_dir / pl).resolve()) if not Path(pl).is_absolute() and not Path(pl).exists()
                       else str(Path(pl).resolve()) for pl in tree.get("plugins", []) or []]
    base = tree.pop("base", None)
    if base:
        parent = _read_yaml(str(base_dir / base), seen + (p.resolve(),))
        plugins = parent.get("plugins", []) + [pl for pl in tree["plugins"] if pl not in parent.get("plugins", [])]
        tree = {**_merge(parent, tree), "plugins": plugins}
    return tree


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply dotted overrides, validate; plugin paths become absolute."""
    tree: dict = _read_yaml(path) if path else {}
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return _build(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"{path or '<overrides>'}: {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def import_plugins(paths: list[str]) -> None:
    """Import user files so their `@REGISTRY.register` decorators run."""
    for i, plugin in enumerate(paths):
        p = Path(plugin)
        if not p.exists():
            raise ConfigError(f"plugin file {plugin!r} not found")
        name = f"rllava_plugin_{i}_{p.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, p)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
