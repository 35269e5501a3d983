"""`rllava train / sft / check / eval / config / list / make-tiny-model / make-task`."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from rllava.config import Config, ConfigError, import_plugins, load_config, to_yaml
from rllava.data.rows import DataError
from rllava.data.template import TemplateError
from rllava.registry import UnknownNameError

# Modules whose import fills the registries that `rllava list` prints.
REGISTRY_MODULES = [
    "rllava.algorithms",
    "rllava.models",
    "rllava.rewards",
    "rllava.tasks",
    "rllava.engines",
    "rllava.envs",
    "rllava.pipelines",
]


# rllava.models.tiny_families.SIZES, spelt out: importing it (torch, transformers) would slow every command's start.
TINY_SIZES = ["tiny", "small", "2b", "4b", "7b"]


def load_registries() -> dict:
    from rllava.registry import ALL_REGISTRIES

    for name in REGISTRY_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:  # a layer not built yet must not break discovery of the others
            if e.name != name:
                raise
    return ALL_REGISTRIES


def cmd_list(args: argparse.Namespace) -> int:
    if args.config or args.overrides:
        cfg = load_config(args.config, args.overrides)
        import_plugins(cfg.plugins)
    registries = load_registries()
    for kind, reg in sorted(registries.items()):
        print(f"{kind}:" + (f"  ({reg.description})" if reg.description else ""))
        for e in reg:
            print(f"  {e.name:<32} {e.description}")
        print()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        from rllava.config_reference import config_reference

        print(config_reference(), end="")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    return 0


SFT_OF = {"agentic": "agentic_sft"}  # what `rllava sft` runs for an RL pipeline other than single-turn


def train_config(args: argparse.Namespace, pipeline: str | None = None) -> Config:
    """The config `rllava train` runs; `rllava sft` passes pipeline=sft, which replaces a pipeline that is not
    supervised (an agentic config's by agentic_sft, its multi-turn counterpart): a config's or override's own
    supervised one (agentic_sft, a plugin's) stays."""
    cfg = load_config(args.config, args.overrides)
    if pipeline:
        from rllava.pipelines import PIPELINES

        import_plugins(cfg.plugins)  # a plugin may register the config's pipeline
        if not PIPELINES.entry(cfg.trainer.pipeline).meta.get("supervised"):
            supervised = SFT_OF.get(cfg.trainer.pipeline, pipeline)
            cfg = load_config(args.config, [*args.overrides, f"trainer.pipeline={supervised}"])
    return cfg


def cmd_train(args: argparse.Namespace, pipeline: str | None = None) -> int:
    from rllava.pipelines.run import run_experiment
    from rllava.pipelines.trainer import StoppedBySignal

    cfg = train_config(args, pipeline)
    try:
        result = run_experiment(cfg)
    except StoppedBySignal as e:  # preempted: saved, not finished (a non-zero status lets a scheduler requeue)
        print(f"rllava: {e}", file=sys.stderr)
        return 128 + e.signum
    # Under torchrun every rank returns, after the process group is gone (is_main() is then true everywhere):
    # torchrun's global RANK says which one prints the summary line.
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rllava.pipelines.evaluate import evaluate_cli

    result = evaluate_cli(args)
    for one in result if isinstance(result, list) else [result]:  # a JSON line per model
        print(json.dumps(one))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rllava.pipelines.preflight import preflight, print_report

    print_report(preflight(load_config(args.config, args.overrides)))
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from rllava.models.tiny import make_tiny_model

    try:
        out = make_tiny_model(args.family, args.out, size=args.size, seed=args.seed)
    except (ValueError, OSError) as e:  # an --out that is a file or cannot be written
        raise ConfigError(f"--out: {e}" if isinstance(e, OSError) else str(e)) from None
    print(out)
    return 0


def cmd_make_task(args: argparse.Namespace) -> int:
    import yaml

    from rllava.tasks import make_task

    opts = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option difficulty=easy")
        opts[key] = yaml.safe_load(value)  # typed like config overrides: 3 -> int, true -> bool
    try:
        if args.layout:
            from rllava.tasks.layouts import make_task_in_layout

            out = make_task_in_layout(args.name, args.layout, args.out, n=args.n, seed=args.seed, **opts)
        else:
            out = make_task(args.name, args.out, n=args.n, seed=args.seed, **opts)
    except ValueError as e:  # an unknown option (the message lists the task's options) or a bad value
        raise ConfigError(str(e)) from None
    except OSError as e:  # an --out that is a file or cannot be written
        raise ConfigError(f"--out: {e}") from None
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rllava", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str, optional: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("config", nargs="?", help="YAML config file" + (" (optional)" if optional else ""))
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
        return sp

    with_config("train", "RL training (trainer.pipeline picks rlvr / agentic)").set_defaults(fn=cmd_train)
    with_config("sft", "supervised fine-tuning on the same actor (trainer.pipeline=sft; agentic_sft for an "
                "agentic config; a config's own supervised pipeline stays)").set_defaults(fn=lambda a: cmd_train(a, "sft"))
    with_config("check", "check a config, its data (every row), model, rewards and plugins without training").set_defaults(
        fn=cmd_check)
    cfg_cmd = with_config("config", "print the resolved config (--reference: every field, as markdown)", optional=True)
    cfg_cmd.add_argument("--reference", action="store_true", help="print the config reference (docs/config.md)")
    cfg_cmd.set_defaults(fn=cmd_config)
    with_config("list", "print every registry (with a config: after importing its plugins)", optional=True).set_defaults(fn=cmd_list)

    ev = sub.add_parser("eval", help="evaluation: accuracy table (greedy, or mean@n, pass@k and maj@n) plus samples")
    ev.add_argument("--model", required=True, help="a model folder; or several: comma-separated, a glob such as "
                    "'outputs/run/checkpoints/step_*/model' (quoted), or a run folder (its checkpoints): a row each")
    ev.add_argument("--data", required=True, help="dataset file(s), a make-task or downloaded dataset folder (--split "
                    "picks its split), or NAME@split")
    ev.add_argument("--config", default=None, help="a training config whose settings (template, rewards, environment, "
                    "stop strings, ...) the evaluation uses; default: the settings each checkpoint was trained with (its "
                    "config.yaml, else its run's), else the data folder's task.yaml")
    ev.add_argument("--reward", default=None, help="reward name or file.py:fn (comma-separated for several), for every "
                    "row (the config's reward.by_source sets and reward.model do not apply); default: the config's or task's rewards, else math")
    ev.add_argument("--split", default="test", help="the split of a dataset folder")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's, else 128")
    ev.add_argument("--template", default=None)
    ev.add_argument("--max-samples", type=int, default=None)
    ev.add_argument("--n", type=int, default=1, help="samples a prompt: > 1 reports mean@n accuracy, pass@k and maj@n")
    ev.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy for "
                                                                        "--n 1, else 1.0)")
    ev.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    ev.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. env.name=tools env.tools=[zoom] for "
                                                  "multi-turn episodes with tools")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(fn=cmd_eval)

    tm = sub.add_parser("make-tiny-model", help="write a tiny random-weight HF model folder (offline)")
    tm.add_argument("--family", required=True, help="HF model_type, e.g. qwen2_vl")
    tm.add_argument("--out", required=True)
    tm.add_argument("--size", default="tiny", choices=TINY_SIZES, help="tiny (~1 M params), small (~31 M), or 2b, 4b, 7b (Qwen2-VL-2B, Qwen2.5-VL-3B and -7B shapes, for GPU benchmarks)")
    tm.add_argument("--seed", type=int, default=0)
    tm.set_defaults(fn=cmd_make_tiny_model)

    mt = sub.add_parser("make-task", help="write a synthetic task dataset folder")
    mt.add_argument("name")
    mt.add_argument("--out", required=True)
    mt.add_argument("--n", type=int, default=1000)
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option (repeatable), e.g. --option difficulty=trivial; an unknown key lists the options")
    mt.add_argument("--layout", default=None, help="write it as a public dataset is laid out on the hub, for that "
                    "dataset's recipes: geometry3k (task geometry), gsm8k (task arithmetic), scienceqa (task "
                    "choice), clevr_cogen_a (task counting)")
    mt.set_defaults(fn=cmd_make_task)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():  # no YAML file: overrides only
        args.overrides, args.config = [config, *args.overrides], None
    try:
        return args.fn(args)
    except (ConfigError, UnknownNameError, DataError, TemplateError) as e:  # bad input: the message names what and where
        print(f"rllava: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the user knows why it stopped; a traceback from inside an import tells nothing
        print("rllava: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
