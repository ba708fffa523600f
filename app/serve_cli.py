"""`storydiff serve`: run the HTTP API with one uvicorn worker (the engine owns the one model copy).

The flags are the `Settings` fields and import no web framework or torch, so that `--help` is
instant; `serve` and `run_serve` import them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys

from pydantic import ValidationError

from app.config import Settings
from app.flags import add_field_flags, error_line, flag_name, given_fields

log = logging.getLogger(__name__)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field; a flag left out keeps STORYDIFF_<NAME>, else the default."""
    add_field_flags(parser, Settings.model_fields, show_default=True)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return Settings(**given_fields(args, Settings.model_fields))


async def serve(settings: Settings) -> int:
    """Serve until a signal stops the server (0) or the model fails to load (1)."""
    import uvicorn

    from app.api import create_app
    from app.api.runtime import ModelRuntime

    app = create_app(settings)
    runtime: ModelRuntime = app.state.runtime
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,
            log_level=settings.log_level,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace) + 5,
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
        print(f"storydiff serve: error: {error_line(err, _flag_or_variable)}", file=sys.stderr)
        return 2
    import torch
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service log
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)  # process-wide, so set by the process owner only
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        return 0


def _flag_or_variable(field: str) -> str:
    return f"{flag_name(field)} (or STORYDIFF_{field.upper()})"
