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
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.config import RENAMED, Settings, deprecated
from app.flags import add_field_flags, error_line, flag_kwargs, flag_name, given_fields
from app.logging_setup import configure_logging
from app.port_check import bind_error

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from app.api.runtime import ModelRuntime

log = logging.getLogger(__name__)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field; a flag left out keeps STORYDIFF_<NAME>, else the default. The old
    names of the durations (`--timeout` for `--timeout-s`, ...) still work, hidden from --help."""
    add_field_flags(parser, Settings.model_fields, show_default=True)
    for old, new in RENAMED.items():
        kwargs = flag_kwargs(Settings.model_fields[new].annotation)
        parser.add_argument(
            flag_name(old), dest=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=RenamedFlag, **kwargs
        )


class RenamedFlag(argparse.Action):
    """A flag under its old name: sets the new field, logging one deprecation line."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        deprecated(option or self.dest, flag_name(self.dest))
        setattr(namespace, self.dest, values)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return Settings(**given_fields(args, Settings.model_fields))


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for `app`: one worker, and the connection limits of docs/operations.md."""
    import uvicorn

    from app.connections import header_deadline_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through storydiff's logging (app/logging_setup.py)
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) + 5,
        http=header_deadline_protocol(settings.header_timeout_s),  # h11: headers bounded in size and in time
        h11_max_incomplete_event_size=settings.max_header_size,
        ws="none",  # no websocket routes: an upgrade request is served as plain HTTP
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )


def draining_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server, except that the first SIGTERM or SIGINT asks for a drain (`drain_requested`)
    instead of stopping at once, and is not re-raised after shutdown (exit 0, not 143); a second
    signal stops it now."""
    import uvicorn

    class Draining(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.drain_requested = asyncio.Event()
            self._signalled = False
            self._loop = asyncio.get_running_loop()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self._signalled:
                self._signalled = True
                self._loop.call_soon_threadsafe(self.drain_requested.set)  # a signal handler: hand it to the loop
            else:  # the second: now, without waiting for streams or the lifespan
                self.should_exit = self.force_exit = True

    return Draining(config)


async def serve(settings: Settings) -> int:
    """Serve until a signal drains and stops the server (0), or the model fails to load or the engine dies (1)."""
    from app.api import create_app

    app = create_app(settings)
    runtime: ModelRuntime = app.state.runtime
    server = draining_server(uvicorn_config(app, settings))
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        return 1  # could not bind; uvicorn logged why
    status = await _supervise(server, serving, runtime, settings)
    server.should_exit = True
    await serving
    return status


async def _supervise(server: Any, serving: asyncio.Future[None], runtime: ModelRuntime, settings: Settings) -> int:
    """Wait for what ends the server: a signal (drain, then 0), a model that cannot load (1), an engine
    thread that died (1, `exit_on_engine_failure_after` seconds later), or uvicorn stopping (0)."""
    settled = asyncio.ensure_future(runtime.wait_settled())
    died = asyncio.ensure_future(runtime.wait_engine_failed())
    drain = asyncio.ensure_future(server.drain_requested.wait())
    watched: set[asyncio.Future[Any]] = {serving, settled, died, drain}
    try:
        while True:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if drain.done():
                draining = asyncio.ensure_future(runtime.drain())
                await asyncio.wait({draining, serving}, return_when=asyncio.FIRST_COMPLETED)  # or a 2nd signal
                draining.cancel()
                return 0
            if serving.done():
                return 0
            if settled in watched and settled.done():
                watched.discard(settled)
                if not settled.result():
                    log.error("stopping: no model to serve (the error above says why)")
                    return 1
                announce_ready(server, settings)
                announce_forward_cost(runtime)
            if died.done():
                watched.discard(died)
                if settings.exit_on_engine_failure_after_s:
                    await _exit_after_engine_failure(died.result(), serving, drain, settings)
                    return 1
    finally:
        for future in (settled, died, drain):
            future.cancel()


async def _exit_after_engine_failure(
    reason: str, serving: asyncio.Future[None], drain: asyncio.Future[Any], settings: Settings
) -> None:
    """Log why, then wait `exit_on_engine_failure_after` seconds (/ready says failed meanwhile)."""
    log.critical(
        "%s; exiting in %gs (exit_on_engine_failure_after) for a supervisor to restart the server",
        reason,
        settings.exit_on_engine_failure_after_s,
    )
    await asyncio.wait({serving, drain}, timeout=settings.exit_on_engine_failure_after_s)


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
        cost_ms = round(cost_ms, 1)  # what the record carries is what the line says (no second rounding)
        log.info(
            "one forward of a %d-token story takes about %.0f ms here (measured at warm-up): a story's seconds "
            "are about its forwards times this, the unit docs/fast-decoding.md uses",
            length,
            cost_ms,
            extra={"event": "forward_cost", "forward_ms": cost_ms, "length": length},
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
