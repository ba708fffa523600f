"""Domain exceptions as HTTP responses: a bounded 422 that always serialises, 429 and 503 with Retry-After."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.admission import ClientOverQuota, TooMuchWork, retry_after
from app.api.resumable import StreamNotFound
from app.api.runtime import ModelNotReady
from app.engine import EngineStopped, QueueFull

MAX_ECHOED_CHARS = 200
MAX_ECHOED_ITEMS = 8
MAX_ECHOED_DEPTH = 2
MAX_ERRORS = 20
UNAVAILABLE_RETRY_AFTER_S = 5
"""Retry-After of a 503: roughly how long a model load or a restart takes to make progress."""

JSON_SCALARS = (bool, int, str, type(None))
LARGEST_ECHOED_INT = 10**MAX_ECHOED_CHARS
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str, limit: int = MAX_ECHOED_CHARS) -> str:
    """`text` cut to `limit` characters, lone surrogates (valid JSON escapes, not UTF-8) as U+FFFD."""
    return _SURROGATE.sub("\ufffd", text[:limit] + ("…" if len(text) > limit else ""))


def echo(value: Any, depth: int = 0) -> Any:
    """A bounded, encodable summary of a client's input: at most a few items of a few levels, strings cut.

    FastAPI's default 422 echoes the offending input in full: `{"length": 1e309}` failed to encode
    (500), a lone surrogate too, 600 nested arrays overflowed the recursion, and a 15 MB array took
    the event loop for 15 s to echo. The summary's size and the work to make it no longer depend on
    the input's.
    """
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LARGEST_ECHOED_INT:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, JSON_SCALARS):
        return value
    if isinstance(value, Mapping):
        return _echo_object(value, depth)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return _echo_array(value, depth)
    return safe_text(str(value))


def _echo_object(value: Mapping[Any, Any], depth: int) -> dict[str, Any] | str:
    if depth >= MAX_ECHOED_DEPTH:
        return f"an object of {len(value)} keys"
    shown = {}
    for i, (key, item) in enumerate(value.items()):
        if i == MAX_ECHOED_ITEMS:
            shown["…"] = f"{len(value) - i} more keys"
            break
        shown[safe_text(str(key))] = echo(item, depth + 1)
    return shown


def _echo_array(value: Sequence[Any], depth: int) -> list[Any] | str:
    if depth >= MAX_ECHOED_DEPTH:
        return f"an array of {len(value)} items"
    shown = [echo(item, depth + 1) for item in value[:MAX_ECHOED_ITEMS]]
    return shown + ([f"… {len(value) - MAX_ECHOED_ITEMS} more items"] if len(value) > MAX_ECHOED_ITEMS else [])


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail` list (type, loc, msg, input, ctx), each part bounded; at most `MAX_ERRORS`."""
    details = []
    for error in errors[:MAX_ERRORS]:
        detail: dict[str, Any] = {
            "type": safe_text(str(error.get("type", "value_error"))),
            "loc": [part if isinstance(part, int) else safe_text(str(part)) for part in error.get("loc", ())],
            "msg": safe_text(str(error.get("msg", "")), 4 * MAX_ECHOED_CHARS),
        }
        if "input" in error:
            detail["input"] = echo(error["input"])
        if isinstance(error.get("ctx"), Mapping):
            detail["ctx"] = {safe_text(str(k)): echo(v, MAX_ECHOED_DEPTH) for k, v in error["ctx"].items()}
        details.append(detail)
    if len(errors) > MAX_ERRORS:
        more = f"{len(errors) - MAX_ERRORS} more errors not shown"
        details.append({"type": "too_many_errors", "loc": ["body"], "msg": more})
    return details


NOT_JSON = {"type": "content_type", "loc": ["body"], "msg": "send JSON with content-type: application/json"}
"""The 422 of a body sent without a JSON content-type (curl -d sends a form): FastAPI reads it as one string."""


def _not_json(request: Request, errors: Sequence[Any]) -> bool:
    """Whether the body failed only because it was not sent as JSON."""
    whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    is_json = "json" in request.headers.get("content-type", "")
    return bool(whole_body) and not is_json and isinstance(whole_body[0].get("input"), str | bytes)


def add_exception_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the service's exception handlers on `app`."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        if _not_json(request, err.errors()):
            return JSONResponse({"detail": [NOT_JSON]}, status_code=422)
        return JSONResponse({"detail": validation_details(err.errors())}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the server is busy ({err}); retry later"},
            status_code=429,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(TooMuchWork)
    async def too_much_work(request: Request, err: TooMuchWork) -> JSONResponse:
        request.app.state.runtime.refusals.count("over_timeout")
        body = {"detail": str(err), "estimate_s": round(err.estimate_s, 1), "timeout_s": err.timeout_s}
        return JSONResponse(body, status_code=429, headers={"Retry-After": retry_after(err.retry_after_s)})

    @app.exception_handler(ClientOverQuota)
    async def over_quota(request: Request, err: ClientOverQuota) -> JSONResponse:
        request.app.state.runtime.refusals.count("client_quota")
        return JSONResponse(
            {"detail": str(err)}, status_code=429, headers={"Retry-After": retry_after(err.retry_after_s)}
        )

    @app.exception_handler(StreamNotFound)
    async def stream_not_found(request: Request, err: StreamNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(ModelNotReady)
    @app.exception_handler(EngineStopped)
    async def unavailable(request: Request, err: ModelNotReady | EngineStopped) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err)}, status_code=503, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
        )
