"""The service's logs: storydiff's and uvicorn's records in one format, plain text or one JSON object a
line, each tagged with the id of the request it is about.

The id lives in a context variable that the API's middleware sets for each request, so every record
logged while serving that request, on the event loop or in its tasks, carries it without being passed
around. Records logged on other threads (the engine's) carry it only when they pass it in `extra`.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import datetime, timezone

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.config import LogFormat

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served in this context; None outside requests."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
NOT_LOGGED = [*RESERVED_ATTRS, "color_message", "request_tag"]
"""Record attributes left out of JSON lines: logging's own, and uvicorn's colour-coded message copy."""


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Give every record a `request_id`: the one in `extra` if given, else this context's request's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class PathOnlyAccessFilter(logging.Filter):
    """uvicorn's access lines with the path but not the query string, and the parts as JSON fields.

    The page's "replay this story" links carry every setting, the prompt included, in the query string
    of `GET /`; prompts are the users' text and stay out of the logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # uvicorn's access-log arguments
            client, method, full_path, http_version, status = record.args
            path = str(full_path).partition("?")[0]
            record.args = (client, method, path, http_version, status)
            record.method, record.path, record.status_code = method, path, status
        return True


class UvicornLines(logging.Filter):
    """uvicorn's own lines under `uvicorn` (it logs every level as `uvicorn.error`), and its "Uvicorn
    running on" said as what it is while the model loads: listening; `storydiff ready` follows."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error":
            record.name = "uvicorn"
            if isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on"):
                where = record.msg.removeprefix("Uvicorn running on ").removesuffix(" (Press CTRL+C to quit)")
                record.msg = f"listening on {where}; loading the model (Ctrl+C stops)"
                record.__dict__.pop("color_message", None)
        return True


class TextFormatter(logging.Formatter):
    """One readable line; ` [request id]` after the logger's name when the record is about a request."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().formatMessage(record)


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, request_id, message, and any `extra`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonLineFormatter(JSON_FIELDS, rename_fields=JSON_NAMES, reserved_attrs=NOT_LOGGED)
    return TextFormatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger's records (uvicorn's too: run it with `log_config=None`) to stderr in `log_format`."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.addFilter(UvicornLines())
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings (torch's, ...) as records too: one format on stderr
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, PathOnlyAccessFilter) for f in access.filters):
        access.addFilter(PathOnlyAccessFilter())
