"""`python -m model_training` / `storydiff train`: parse a preset plus flag overrides, then train.

Every TrainConfig field is a flag (`--max-steps`, `--seq-len`, ...); flags override the YAML file
named by `--config`. Bad input is one line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.flags import add_field_flags
from model_training.config import TrainConfig, build_config, read_yaml, resolve_preset
from model_training.errors import TrainingInputError

EPILOG = """examples:
  {prog} --config scratch-tinystories --output runs/scratch --max-steps 2000
  accelerate launch -m model_training --config distilbert-tinystories --output runs/ft
  {prog} --config scratch-tinystories --output runs/scratch --resume auto
"""
PROG = "python -m model_training"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The trainer's parser: --config plus one flag per TrainConfig field, defaults from the preset."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a masked diffusion story model (fine-tune a masked LM or train one from scratch).",
        epilog=EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="YAML preset: a path or a name in model_training/configs/ "
        "(distilbert-tinystories, scratch-tinystories, scratch-tinystories-gpu, tiny-test)",
    )
    add_field_flags(
        parser,
        TrainConfig.model_fields,
        show_default=True,
        extra={"resume": {"nargs": "?", "const": "auto", "metavar": "auto|PATH"}},
    )
    return parser


def parse_config(argv: Sequence[str], prog: str = PROG) -> TrainConfig:
    """TrainConfig from `argv`: the preset's values, then the flags given."""
    args = vars(build_parser(prog).parse_args(list(argv)))
    preset = args.pop("config", None)
    values = read_yaml(resolve_preset(preset)) if preset else {}
    values.update(args)
    return build_config(values)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Train; 0 on success, 2 (one line on stderr) on bad input. `prog` names the command in messages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg: TrainConfig | None = None
    try:
        cfg = parse_config(argv, prog)
        from huggingface_hub.utils import logging as hub_logging

        from model_training.loop import train  # heavy imports only once the options are valid

        hub_logging.disable_propagation()  # huggingface_hub prints its own warnings: through the root too, twice

        summary = train(cfg)
    except TrainingInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted{'' if cfg is None else ': ' + _how_to_go_on(Path(cfg.output))}", file=sys.stderr)
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


def _how_to_go_on(output: Path) -> str:
    """`--resume auto` where a saved state exists; before the first one there is nothing to resume."""
    from model_training.checkpoints import complete_states

    states = complete_states(output)
    if states:
        return f"resume from {states[-1].name} with --resume auto"
    return "stopped before the first checkpoint: nothing to resume, the same command starts again"
