"""Domain exceptions as HTTP responses: 422 that always serialises, 429 and 503 with Retry-After."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.runtime import ModelNotReady
from app.engine import EngineStopped, QueueFull

MAX_ECHOED_CHARS = 200
UNAVAILABLE_RETRY_AFTER_S = 5
"""Retry-After of a 503: roughly how long a model load or a restart takes to make progress."""


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as strings and long strings cut, so any input can be echoed.

    FastAPI's default 422 handler echoes the offending input, and `{"length": 1e309}` (inf) made
    it fail with a 500; a 20 kB prompt came back in full.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
        return value[:MAX_ECHOED_CHARS] + "…"
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def add_exception_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the service's exception handlers on `app`."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": json_safe(jsonable_encoder(err.errors()))}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the server is busy ({err}); retry later"},
            status_code=429,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(ModelNotReady)
    @app.exception_handler(EngineStopped)
    async def unavailable(request: Request, err: ModelNotReady | EngineStopped) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err)}, status_code=503, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
        )
