"""The OpenAPI document, plus the schemas of the SSE events that FastAPI cannot see by itself.

`/generate` streams through sse-starlette, so FastAPI does not know the events' models; the route
refers to them as `#/components/schemas/<Name>` (in OpenAPI 3.2's `itemSchema` form, as FastAPI's
own SSE support writes it) and this adds them to the components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def add_model_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Make `app.openapi()` include `models` (and the models they use) under components.schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template=REF_TEMPLATE)
                components.update(model_schema.pop("$defs", {}))
                components.setdefault(model.__name__, model_schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
