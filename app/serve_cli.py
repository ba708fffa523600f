"""`storydiff serve`: run the HTTP API with one uvicorn worker (the engine owns the one model copy)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import torch
import uvicorn
from pydantic import ValidationError
from transformers.utils import logging as transformers_logging

from app.api import create_app
from app.api.runtime import ModelRuntime
from app.config import Settings

log = logging.getLogger(__name__)

# flag -> (type, help); every default is None so that STORYDIFF_* variables and Settings decide.
SERVE_FLAGS: dict[str, tuple[type, str]] = {
    "model": (str, "checkpoint directory or hub id (default: the packaged model)"),
    "device": (str, "cpu, cuda, cuda:1 or mps (default: the fastest present)"),
    "dtype": (str, "float32, bfloat16 or float16 (default: bf16 on GPUs, fp32 on CPU)"),
    "host": (str, "interface to bind (default: 127.0.0.1)"),
    "port": (int, "TCP port (default: 8000)"),
    "max_batch": (int, "most sequences in one forward pass (default: 32)"),
    "max_queue": (int, "most requests waiting for a slot before 429 (default: 64)"),
    "timeout": (float, "seconds a request may take, queueing included (default: 300)"),
    "ping_interval": (float, "seconds between SSE keep-alive comments, 0 for none (default: 15)"),
    "shutdown_grace": (float, "seconds in-flight requests get to finish on shutdown (default: 10)"),
    "retry_after": (int, "Retry-After seconds sent with 429 (default: 1)"),
    "threads": (int, "CPU threads for torch ops (default: all cores)"),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags; each also reads STORYDIFF_<NAME> from the environment."""
    for name, (kind, help_text) in SERVE_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    parser.add_argument(
        "--log-level",
        dest="log_level",
        default=None,
        choices=["critical", "error", "warning", "info", "debug"],
        help="(default: info)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields and value is not None}
    return Settings(**given)


async def serve(settings: Settings) -> int:
    """Serve until a signal stops the server (0) or the model fails to load (1)."""
    app = create_app(settings)
    runtime: ModelRuntime = app.state.runtime
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,
            log_level=settings.log_level,
            timeout_graceful_shutdown=settings.shutdown_grace + 5,
        )
    )
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        return 1  # could not bind; uvicorn logged why
    settled = asyncio.ensure_future(runtime.wait_settled())
    await asyncio.wait({serving, settled}, return_when=asyncio.FIRST_COMPLETED)
    if settled.done() and not settled.result():
        log.error("stopping: the model could not be loaded (%s)", runtime.error)
        server.should_exit = True
        await serving
        return 1
    await serving
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `storydiff serve`."""
    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        print(f"storydiff serve: invalid settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service log
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)  # process-wide, so set by the process owner only
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        return 0
