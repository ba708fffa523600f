"""The FastAPI application: `create_app(settings)`, whose lifespan owns the model runtime and engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.errors import add_exception_handlers
from app.api.openapi import add_event_schemas
from app.api.routes import router
from app.api.runtime import ModelRuntime
from app.config import Settings


def create_app(settings: Settings) -> FastAPI:
    """The service for `settings`; nothing loads until the lifespan starts."""
    runtime = ModelRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="storydiff",
        version=__version__,
        summary="Children's stories from a masked diffusion language model, streamed step by step.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime  # what the routes' dependencies read (app/api/deps.py)
    app.include_router(router)
    add_exception_handlers(app, settings.retry_after)
    add_event_schemas(app)
    return app
