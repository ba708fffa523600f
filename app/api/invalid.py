"""A 422 in FastAPI's own format, for checks that need more than the request body (the loaded model)."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

_ABSENT = object()


def invalid_field(field: str, message: str, value: Any = _ABSENT, kind: str = "value_error") -> RequestValidationError:
    """The error of body field `field`, as pydantic would report it (with its `input` when given)."""
    error: dict[str, Any] = {"type": kind, "loc": ("body", field), "msg": message}
    if value is not _ABSENT:
        error["input"] = value
    return RequestValidationError([error])
