"""`python -m model_training` / `storydiff train`: parse a preset plus flag overrides, then train.

Every TrainConfig field is a flag (`--max-steps`, `--seq-len`, ...); flags override the YAML file
named by `--config`. Bad input is one line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_training.config import TrainConfig, build_config, read_yaml, resolve_preset
from model_training.errors import TrainingInputError

EPILOG = """examples:
  python -m model_training --config scratch-tinystories --output runs/scratch --max-steps 2000
  accelerate launch -m model_training --config distilbert-tinystories --output runs/ft
  python -m model_training --config scratch-tinystories --output runs/scratch --resume auto
"""


def _none_or(kind: type):
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field type: bools are --x/--no-x, lists take several values."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else annotation
    origin = typing.get_origin(inner)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"nargs": "+", "metavar": "VALUE"}
    if origin is tuple:
        return {"nargs": len(typing.get_args(inner)), "type": float, "metavar": "X"}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(inner))}
    kind = inner if inner in (int, float, str, Path) else str
    return {"type": _none_or(kind) if optional else kind}


def build_parser() -> argparse.ArgumentParser:
    """The trainer's parser: --config plus one flag per TrainConfig field, defaults from the preset."""
    parser = argparse.ArgumentParser(
        prog="python -m model_training",
        description="Train a masked diffusion story model (fine-tune a masked LM or train one from scratch).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="YAML preset: a path or a name in model_training/configs/ "
        "(distilbert-tinystories, scratch-tinystories, scratch-tinystories-gpu, tiny-test)",
    )
    for name, field in TrainConfig.model_fields.items():
        default = "required" if field.is_required() else f"default: {field.default}"
        kwargs = _flag_kwargs(field.annotation)
        if name == "resume":
            kwargs.update(nargs="?", const="auto", metavar="auto|PATH")
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} ({default})",
            **kwargs,
        )
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """TrainConfig from `argv`: the preset's values, then the flags given."""
    args = vars(build_parser().parse_args(list(argv)))
    preset = args.pop("config", None)
    values = read_yaml(resolve_preset(preset)) if preset else {}
    values.update(args)
    return build_config(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Train; 0 on success, 2 (one line on stderr) on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv)
        from model_training.loop import train  # heavy imports only once the options are valid

        summary = train(cfg)
    except TrainingInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume auto", file=sys.stderr)
        return 130
    from accelerate import PartialState

    if PartialState().is_main_process:
        r, p = summary.result, summary.progress
        print(
            f"done: {p.step} steps, {p.tokens_seen:,} tokens in {p.wall_seconds:.0f} s "
            f"({summary.tokens_per_second:,.0f} tok/s); val {r.nats_per_token:.4f} nats/position, "
            f"{r.bits_per_char:.4f} bits/char; saved {summary.final_dir}"
        )
        print(f"best: step {p.best_step}, val {p.best_nats:.4f} nats/position; saved {summary.best_dir}")
    return 0
