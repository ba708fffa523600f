"""Errors of the /v1 routes in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

OpenAI's clients read that shape (the `openai` library raises `BadRequestError` with its message).
The routes' class turns every error raised while handling a /v1 request into it: a validation error
becomes a 400 naming the field (OpenAI's status, where FastAPI says 422), and any exception the app
has a handler for (429 queue full, 503 not ready, 401 no API key, ...) keeps that handler's status and
headers (Retry-After, WWW-Authenticate), so the status rules stay declared once, in app/api/errors.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.api.errors import safe_text
from app.api.openai.protocol import ErrorDetail, ErrorResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    503: "service_unavailable",
    504: "timeout_error",
}
KEPT_HEADERS = ("retry-after", "www-authenticate")


class OpenAIError(Exception):
    """An error the /v1 routes decide themselves, e.g. an unknown model (404) or a prompt too long (400)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    detail = ErrorDetail(message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers)


def validation_error(err: RequestValidationError) -> JSONResponse:
    """A 400 naming the first invalid field, every error in the message."""
    errors = err.errors()
    fields = [".".join(str(part) for part in error.get("loc", ()) if part != "body") for error in errors]
    messages = [
        f"{name or 'body'}: {safe_text(str(error.get('msg', '')))}" for name, error in zip(fields, errors, strict=True)
    ]
    return error_response(400, "; ".join(messages[:5]), param=fields[0] if fields else None)


async def as_openai_error(request: Request, err: Exception) -> Response:
    """`err` as an OpenAI error response; re-raised when the app has no handler for it (a 500)."""
    if isinstance(err, OpenAIError):
        return error_response(err.status, err.message, err.param, err.code)
    if isinstance(err, RequestValidationError):
        return validation_error(err)
    handler = next(
        (request.app.exception_handlers[cls] for cls in type(err).__mro__ if cls in request.app.exception_handlers),
        None,
    )
    if handler is None:
        raise err
    answer: Response = await handler(request, err)
    headers = {name: value for name, value in answer.headers.items() if name in KEPT_HEADERS}
    return error_response(answer.status_code, _message(answer, err), headers=headers)


def _message(answer: Response, err: Exception) -> str:
    """The handler's `detail` when it is text, else the exception's own message."""
    try:
        detail: Any = json.loads(bytes(answer.body)).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return detail if isinstance(detail, str) else str(err) or type(err).__name__


class OpenAIRoute(APIRoute):
    """A route whose errors, its dependencies' included, come in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_openai_shape(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as err:
                return await as_openai_error(request, err)

        return handle_in_openai_shape
