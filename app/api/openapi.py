"""The OpenAPI document, plus what FastAPI cannot see by itself: the SSE events of `/generate`.

`/generate` streams through sse-starlette, so FastAPI does not know the events' models; the route
refers to them as `#/components/schemas/<Name>` (in OpenAPI 3.2's `itemSchema` form, as FastAPI's
own SSE support writes it) and `add_event_schemas` adds them to the components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from app.api.schemas import ErrorEvent, GenerateResponse, StepDelta, StepEvent

REF_TEMPLATE = "#/components/schemas/{model}"
EVENT_MODELS: list[type[BaseModel]] = [StepEvent, StepDelta, GenerateResponse, ErrorEvent]
"""The data of the `step` (by `stream_format`: json, deltas), `done` and `error` events."""


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


STREAM_DESCRIPTION = (
    "With `stream: true` (or `Accept: text/event-stream` and no `stream` field): a stream of "
    "`step` events (one per `stream_every` steps and the last, data: StepEvent), then one `done` "
    "event (data: GenerateResponse) or one `error` event (data: ErrorEvent). `stream_format` chooses the "
    "`step` events' data: a StepEvent (`json`, the default), a StepDelta without the draft (`deltas`), or "
    "the draft alone as plain text (`text`). Every event has an "
    "increasing `id`; `: ping` comments keep idle connections open. The `X-Stream-ID` header names the "
    "stream for `GET /generate/{stream_id}` (resume after a dropped connection) and "
    "`DELETE /generate/{stream_id}` (cancel)."
)

RESUME_DESCRIPTION = (
    "The stream of a `POST /generate` whose connection dropped, for `resume_grace` seconds after its "
    "client left or its story ended. The first event brings the client up to date: a `step` event "
    "with exactly the changes after the event `Last-Event-ID` names, otherwise (no or an unknown "
    "`Last-Event-ID`) a full frame, each position's latest reveal or remask so far, marked `full: true`; "
    "then live steps and `done` or `error`, as in `POST /generate`. Event ids go on from the stream's "
    "previous connection. A new connection ends the previous one with an `error` event `taken_over`; a "
    "cancel (DELETE) ends it with `cancelled` (neither has an `id`)."
)

SSE_ITEM_SCHEMA = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["step", "done", "error"]},
        "id": {"type": "string", "description": "1, 2, 3, ... in the order sent, across a stream's connections."},
        "data": {
            "type": "string",
            "description": "JSON, except a `step` event's with `stream_format: text`: the draft as plain text.",
            "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [schema_ref(model) for model in EVENT_MODELS]},
        },
    },
}
"""One SSE event (OpenAPI 3.2 `itemSchema`): step -> StepEvent, done -> GenerateResponse, error -> ErrorEvent."""

GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"itemSchema": SSE_ITEM_SCHEMA}}},
    422: {"description": "Invalid request: `detail` names the field and the reason."},
    429: {"description": "Every batch slot and queue place is taken; see Retry-After."},
    503: {"description": "The model is not loaded yet, or the server is shutting down."},
    504: {"model": ErrorEvent, "description": "The request ran past the server's timeout."},
}


RESUME_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"itemSchema": SSE_ITEM_SCHEMA}},
        "description": "The stream, from a frame that brings the client up to date.",
    },
    404: {"description": "No such stream: cancelled, never issued, or expired (`resume_grace`)."},
    422: {"description": "A malformed stream id or `Last-Event-ID`."},
    503: GENERATE_RESPONSES[503],
}


def add_event_schemas(app: FastAPI) -> None:
    """Make `app.openapi()` include the events' models (and the models they use) under components.schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in EVENT_MODELS:
                model_schema = model.model_json_schema(ref_template=REF_TEMPLATE)
                components.update(model_schema.pop("$defs", {}))
                components.setdefault(model.__name__, model_schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
