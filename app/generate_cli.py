"""`storydiff generate`: one story in the terminal, watching every denoising step."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

import transformers
from rich.console import Console
from rich.live import Live

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, load_checkpoint
from app.diffusion.generation import sampler_from_defaults, story_steps
from app.diffusion.sampler_settings import new_seed
from app.diffusion.sampling import Remasking
from app.diffusion.text import decode_story
from app.terminal_view import step_view


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `storydiff generate`; sampler flags left out take the checkpoint's defaults."""
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory or Hugging Face hub id")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--prompt", default=None, help="story beginning; kept, never masked")
    parser.add_argument(
        "--length", type=int, default=None, help="sequence length in tokens (default: the checkpoint's)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the checkpoint's, else one per token)"
    )
    parser.add_argument(
        "--remasking",
        choices=[r.value for r in Remasking],
        default=None,
        help="random: the reference sampler; low_confidence: keep the surest tokens",
    )
    parser.add_argument("--temperature", type=float, default=None, help="0 = argmax")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    parser.add_argument(
        "--block-length",
        type=int,
        default=None,
        help="low_confidence: reveal blocks of this many tokens, left to right "
        "(default: the checkpoint's; 0: no blocks)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    parser.add_argument("--no-live", action="store_true", help="print only the final story")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run_generate(args: argparse.Namespace) -> int:
    """Load the checkpoint, denoise one story (live unless asked not to) and print it."""
    logging.basicConfig(level=logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    console = Console(stderr=args.json)
    try:
        ckpt = load_checkpoint(args.model, device=args.device, dtype=args.dtype)
        cfg = sampler_from_defaults(
            ckpt,
            steps=args.steps,
            remasking=args.remasking,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            block_length=args.block_length or None,
        )
        if args.block_length == 0:  # explicitly no blocks, whatever the checkpoint recommends
            cfg = dataclasses.replace(cfg, block_length=None)
        seed = new_seed() if args.seed is None else args.seed
        steps = story_steps(ckpt, cfg, seed, args.prompt, args.length)
        start = time.perf_counter()
        x = _follow(steps, ckpt.tokenizer, console, live=not (args.no_live or args.json))
    except (CheckpointError, ValueError) as err:
        print(f"storydiff generate: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    story = decode_story(x, ckpt.tokenizer)
    if args.json:
        print(
            json.dumps(
                {
                    "text": story,
                    "seed": seed,
                    "steps": cfg.steps,
                    "length": len(x),
                    "remasking": cfg.remasking.value,
                    "temperature": cfg.temperature,
                    "top_k": cfg.top_k,
                    "top_p": cfg.top_p,
                    "block_length": cfg.block_length,
                    "elapsed_s": round(elapsed, 3),
                    "model": ckpt.source,
                }
            )
        )
    else:
        print(story)
        if not args.no_live:
            console.print(f"[dim]seed {seed} · {cfg.steps} steps · {elapsed:.1f}s[/dim]")
    return 0


def _follow(steps, tokenizer, console: Console, live: bool) -> list[int]:
    """Consume the steps, drawing each one when `live`; return the final token ids."""
    if not live:
        for step in steps:
            last = step
        return last.x[0].tolist()
    start = time.perf_counter()
    with Live(console=console, refresh_per_second=20, transient=False) as view:
        for step in steps:
            fresh = dict(zip(step.positions.tolist(), step.probs.tolist(), strict=True))
            ids = step.x[0].tolist()
            view.update(
                step_view(ids, tokenizer, fresh, step.index, step.num_steps, step.t, time.perf_counter() - start)
            )
    return ids
