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
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.config import Settings
from app.flags import add_field_flags, error_line, flag_name, given_fields
from app.logging_setup import configure_logging
from app.port_check import bind_error

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from app.api.runtime import ModelRuntime

log = logging.getLogger(__name__)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field; a flag left out keeps STORYDIFF_<NAME>, else the default."""
    add_field_flags(parser, Settings.model_fields, show_default=True)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return Settings(**given_fields(args, Settings.model_fields))


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for `app`: one worker, and the connection limits of docs/operations.md."""
    import uvicorn

    from app.api.connections import header_deadline_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through storydiff's logging (app/logging_setup.py)
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace) + 5,
        http=header_deadline_protocol(settings.header_timeout),  # h11: headers bounded in size and in time
        h11_max_incomplete_event_size=settings.max_header_size,
        ws="none",  # no websocket routes: an upgrade request is served as plain HTTP
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout,
    )


async def serve(settings: Settings) -> int:
    """Serve until a signal stops the server (0), or the model fails to load or the engine dies (1)."""
    import uvicorn

    from app.api import create_app

    app = create_app(settings)
    runtime: ModelRuntime = app.state.runtime
    server = uvicorn.Server(uvicorn_config(app, settings))
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        return 1  # could not bind; uvicorn logged why
    settled = asyncio.ensure_future(runtime.wait_settled())
    await asyncio.wait({serving, settled}, return_when=asyncio.FIRST_COMPLETED)
    if settled.done() and not settled.result():
        log.error("stopping: no model to serve (the error above says why)")
        server.should_exit = True
        await serving
        return 1
    if settled.done():
        announce_ready(server, settings)
        announce_forward_cost(runtime)
    if settings.exit_on_engine_failure_after and await _engine_died(serving, runtime):
        await asyncio.wait({serving}, timeout=settings.exit_on_engine_failure_after)  # /ready says why meanwhile
        server.should_exit = True
        await serving
        return 1
    await serving
    return 0


async def _engine_died(serving: asyncio.Future[None], runtime: ModelRuntime) -> bool:
    """Wait until the server stops (False) or the engine thread dies (True, logged)."""
    died = asyncio.ensure_future(runtime.wait_engine_failed())
    either: set[asyncio.Future[Any]] = {serving, died}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not died.done():
        died.cancel()
        return False
    log.critical(
        "%s; exiting in %gs (exit_on_engine_failure_after) for a supervisor to restart the server",
        died.result(),
        runtime.settings.exit_on_engine_failure_after,
    )
    return True


def announce_ready(server: uvicorn.Server, settings: Settings) -> None:
    """One line saying where the page and the API docs are, with the port bound (`--port 0` picks one):
    printed, or a log record when logs are JSON (one object a line)."""
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address
    url = f"http://{host}:{port}/"
    line = f"storydiff ready: {url} (API docs: {url}docs)"
    if settings.log_format == "json":
        log.info(line, extra={"event": "ready", "url": url, "docs_url": f"{url}docs"})
    else:
        print(line, flush=True)


def announce_forward_cost(runtime: ModelRuntime) -> None:
    """What one forward of a default-length story costs on this machine, in the unit of
    docs/fast-decoding.md (ms a forward), so that a user can place the docs' seconds."""
    if runtime.loaded is None:
        return
    engine, length = runtime.loaded.engine, runtime.loaded.checkpoint.config.seq_len
    cost_ms = engine.forward_cost.of(1, length) * 1e3
    if math.isfinite(cost_ms):
        log.info(
            "one forward of a %d-token story takes about %.0f ms here (measured at warm-up): a story's seconds "
            "are about its forwards times this, the unit docs/fast-decoding.md uses",
            length,
            cost_ms,
            extra={"event": "forward_cost", "forward_ms": round(cost_ms, 1), "length": length},
        )


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `storydiff serve`."""
    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        print(f"storydiff serve: error: {error_line(err, _flag_or_variable)}", file=sys.stderr)
        return 2
    if (busy := bind_error(settings.host, settings.port)) is not None:  # before loading anything
        where = "--host/--port or STORYDIFF_HOST/STORYDIFF_PORT"
        print(f"storydiff serve: error: {busy}; choose where with {where}", file=sys.stderr)
        return 1
    import torch
    from transformers.utils import logging as transformers_logging

    configure_logging(settings.log_level, settings.log_format)
    transformers_logging.disable_progress_bar()  # a progress bar is noise in a service log
    transformers_logging.disable_default_handler()  # its records go through ours, in --log-format
    transformers_logging.enable_propagation()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)  # process-wide, so set by the process owner only
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        return 0


def _flag_or_variable(field: str) -> str:
    return f"{flag_name(field)} (or STORYDIFF_{field.upper()})"
