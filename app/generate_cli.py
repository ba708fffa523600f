"""`storydiff generate`: one story in the terminal, watching every denoising step.

The flags import no torch or transformers, so that `--help` is instant; `run_generate` imports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.diffusion.cpu_backend import CPU_BACKEND_HELP, CPU_BACKENDS, KV_REFRESH_HELP, MissingExtra
from app.diffusion.sampler_settings import (
    MAX_SEED,
    NULLABLE_FIELDS,
    PRESETS,
    SamplerOverrides,
    SamplerSettings,
    new_seed,
)
from app.flags import add_field_flags, error_line, flag_name, given_fields
from app.generate_checks import problem
from app.paths import DEFAULT_MODEL_DIR, model_name

if TYPE_CHECKING:
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase

    from app.diffusion.canvas import Canvas, Segment
    from app.diffusion.checkpoint import Checkpoint
    from app.diffusion.sampling import Step
    from app.diffusion.text import FixedSpan

SAMPLER_DEFAULTS = (
    "A sampler flag left out takes the checkpoint's value (its diffusion_config.json), else the built-in "
    f"default; `none` turns {', '.join(flag_name(name) for name in sorted(NULLABLE_FIELDS))} off."
)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `storydiff generate`: one per sampler setting, plus model, prompt, length, seed and output."""
    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory or hub id (default: the packaged model)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or cuda:N (default: the fastest present; mps is refused: the sampler needs float64)",
    )
    parser.add_argument(
        "--dtype", default="auto", help="float32, bfloat16 or float16 (default: bf16 on GPUs, fp32 on CPU)"
    )
    parser.add_argument("--cpu-backend", choices=CPU_BACKENDS, default="auto", help=CPU_BACKEND_HELP)
    parser.add_argument("--kv-refresh", type=_kv_refresh, default=0, metavar="K", help=KV_REFRESH_HELP)
    parser.add_argument("--prompt", help="story beginning; kept, never masked")
    parser.add_argument(
        "--ending", help="the story's last words, kept: the story ends with them at --length (docs/infilling.md)"
    )
    parser.add_argument(
        "--template",
        help="the whole story as text with blanks: [___:N] is N tokens for the model to write, [___:~N] at most N "
        "(last blank only: the model may end the story sooner), e.g. 'Once upon a time [___:40] The end.'; "
        "takes no --prompt, --ending or --length",
    )
    parser.add_argument("--length", type=_length, help="tokens, prompt included (default: the checkpoint's)")
    parser.add_argument("--seed", type=_seed, help="same seed and settings, same story (default: random, printed)")
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="print only the story, the seed going to stderr (what happens anyway when stdout is not a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print the story and its settings as one JSON object")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="a speed/quality trade-off over the checkpoint's defaults; sampler flags override it",
    )
    add_field_flags(parser.add_argument_group("sampler settings", SAMPLER_DEFAULTS), SamplerSettings.model_fields)


def run_generate(args: argparse.Namespace) -> int:
    """Check the flags, load the checkpoint, denoise one story (live unless asked not to) and print it."""
    try:
        overrides = SamplerOverrides.model_validate(given_fields(args, SamplerSettings.model_fields))
    except ValidationError as err:
        return _fail(error_line(err))
    if found := problem(args):  # before torch loads: a typo costs no model load
        return _fail(found)
    print(f"loading model {model_name(args.model)}…", file=sys.stderr, flush=True)
    # Imported here, once the flags are valid: torch and transformers take seconds to import.
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    from app.diffusion.checkpoint import CheckpointError

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("app.diffusion.onnx_graph").setLevel(logging.INFO)  # a first run's graph preparation
    hub_logging.disable_propagation()  # huggingface_hub prints its own warnings: through the root too, twice
    transformers_logging.disable_progress_bar()
    from rich.console import Console

    live = not (args.no_live or args.json) and Console().is_terminal  # a pipe or a file gets plain text
    try:
        result = _write(args, overrides, Console() if live else None)
    except (CheckpointError, ValueError, MissingExtra) as err:  # CheckpointError is a ValueError
        return _fail(str(err))
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["text"])
    summary = f"seed {result['seed']} · {result['steps']} steps · {result['forwards']} forwards · "
    summary += f"{result['elapsed_s']:.1f}s"
    if live:
        Console().print(f"[dim]{summary}[/dim]")
    else:
        print(summary, file=sys.stderr)  # stdout stays the story alone; the seed replays it
    return 0


def _write(args: argparse.Namespace, overrides: SamplerOverrides, console: Console | None) -> dict[str, Any]:
    """The story (drawn live on `console` if given) and how it was written: the API answer's fields."""
    from app.diffusion.checkpoint import load_checkpoint
    from app.diffusion.cpu_forward import select_forward
    from app.diffusion.generation import canvas_steps, story_steps
    from app.diffusion.kv_reuse import ReusingForward
    from app.diffusion.template import parse_template, prompt_template
    from app.diffusion.text import prompt_ids, prompt_span, story_text, without_pad_tail

    segments = prompt_template(args.prompt, args.ending) if args.template is None else parse_template(args.template)
    seed = new_seed() if args.seed is None else args.seed
    ckpt = load_checkpoint(args.model, device=args.device, dtype=args.dtype)
    settings = ckpt.config.settings_for(args.preset).override(overrides)
    canvas = _canvas(ckpt, segments, args)
    forward = (
        ReusingForward(ckpt.model, ckpt.mask_id, args.kv_refresh)
        if args.kv_refresh
        else select_forward(ckpt.model, args.cpu_backend)
    )
    if canvas is None:
        steps = story_steps(ckpt, settings, seed, args.prompt, args.length, forward)
    else:
        steps = canvas_steps(ckpt, settings, seed, canvas, forward)
    start = time.perf_counter()
    typed = prompt_span(ckpt.tokenizer, args.prompt) if canvas is None else canvas.texts
    x, forwards = _follow(steps, ckpt.tokenizer, settings.steps, console, typed)
    elapsed = time.perf_counter() - start
    if canvas is None:
        text = story_text(x, ckpt.tokenizer, typed)
        written = len(x) - len(prompt_ids(ckpt.tokenizer, args.prompt))
    else:
        text, written = canvas.story_text(x, ckpt.tokenizer), canvas.ids.count(canvas.mask_id)
    return {
        "text": text,
        "seed": seed,
        "steps": settings.steps,
        "length": len(x),
        "tokens": without_pad_tail(x, ckpt.tokenizer.pad_token_id),
        "elapsed_s": round(elapsed, 4),
        "forwards": forwards,
        "tokens_per_forward": written / forwards if forwards else 0.0,
        "model": model_name(ckpt.source),
        "preset": args.preset,
        **settings.model_dump(mode="json", exclude={"steps"}),
    }


def _canvas(ckpt: Checkpoint, segments: list[Segment] | None, args: argparse.Namespace) -> Canvas | None:
    """The story around fixed text that --template or --ending asks for; None for a plain story."""
    from app.diffusion.canvas import build_canvas, ending_canvas

    if segments is not None:
        return build_canvas(ckpt.tokenizer, segments, ckpt.max_positions)
    if args.ending is not None:
        length = ckpt.config.length_for(args.length or None)
        return ending_canvas(ckpt.tokenizer, args.prompt, args.ending, length, ckpt.max_positions)
    return None


def _follow(
    steps: Iterable[tuple[int, Step]],
    tokenizer: PreTrainedTokenizerBase,
    num_steps: int,
    console: Console | None,
    typed: Sequence[FixedSpan] = (),
) -> tuple[list[int], int]:
    """Consume the steps, drawing each one (its `typed` text as typed) on `console` if given; return the
    final token ids and the number of model forwards."""
    forwards = 0
    if console is None:
        for _, step in steps:
            last, forwards = step, forwards + step.model_called
        return list(last.x[0].tolist()), forwards
    from rich.live import Live

    from app.diffusion.sampling import diffusion_time
    from app.terminal_view import step_view

    start = time.perf_counter()
    with Live(console=console, refresh_per_second=20, transient=False) as view:
        for done, step in steps:
            forwards += step.model_called
            fresh = dict(zip(step.positions.tolist(), step.probs.tolist(), strict=True))
            ids = step.x[0].tolist()
            t = diffusion_time(done, num_steps)
            elapsed = time.perf_counter() - start
            view.update(step_view(ids, tokenizer, fresh, done, num_steps, t, elapsed, typed))
    return list(ids), forwards


def _fail(message: str) -> int:
    print(f"storydiff generate: error: {message}", file=sys.stderr)
    return 2


def _length(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (1 or more)")
    return int(text)


def _kv_refresh(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of forwards (0: off, 1 or more)")
    return int(text)


def _seed(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (a whole number from 0 to {MAX_SEED})")
    return int(text)
