"""`storydiff`: generate a story in the terminal, serve the API, or train a model.

Building the parser imports no torch, transformers or web framework: `--help` answers at once, and
each command imports what it runs.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The `storydiff` parser with its `generate`, `serve` and `train` subcommands."""
    from app.generate_cli import add_generate_arguments
    from app.serve_cli import add_serve_arguments

    parser = argparse.ArgumentParser(
        prog="storydiff",
        description="Children's stories from a masked diffusion language model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_arguments(
        commands.add_parser(
            "generate",
            help="write one story in the terminal, watching it denoise",
            description="Write one story, showing every denoising step live in the terminal.",
        )
    )
    add_serve_arguments(
        commands.add_parser(
            "serve",
            help="run the HTTP API (POST /generate, streamed over SSE)",
            description="Run the storydiff HTTP service with uvicorn. Every flag can also be set "
            "through an environment variable STORYDIFF_<NAME>.",
        )
    )
    commands.add_parser(
        "train",
        help="train a model (`storydiff train --help` lists its options)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `storydiff` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after `train` belongs to the trainer's own parser
        from model_training.cli import main as train_main

        return train_main(argv[1:], prog="storydiff train")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = _subparsers(parser)[args.command]
        command.error(f"unrecognized arguments: {' '.join(unknown)}{_suggestion(command, unknown)}")
    if args.command == "generate":
        from app.generate_cli import run_generate

        return _quiet_on_closed_pipe(run_generate, args)
    from app.serve_cli import run_serve

    return run_serve(args)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _suggestion(command: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """'; did you mean --steps?' for the first unknown flag close to a known one (argparse's own
    `suggest_on_error` needs Python 3.14)."""
    known = [flag for action in command._actions for flag in action.option_strings]
    for word in unknown:
        if word.startswith("-") and (close := difflib.get_close_matches(word.split("=")[0], known, n=1)):
            return f"; did you mean {close[0]}?"
    return ""


def _quiet_on_closed_pipe(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run `run`; a reader that left (`| head`) ends it quietly, without a BrokenPipeError traceback."""
    try:
        code = run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails too
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
