"""The FastAPI application: `create_app(settings)`, whose lifespan owns the model runtime and engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.docs_pages import add_docs_pages
from app.api.errors import add_exception_handlers
from app.api.limits import BodyLimit
from app.api.openai.routes import router as openai_router
from app.api.openapi import add_event_schemas
from app.api.request_ids import RequestIdMiddleware
from app.api.routes import OPEN_ROUTES, public, router
from app.api.runtime import ModelRuntime
from app.api.security import install_security
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
        docs_url=None,  # /docs and /redoc with self-hosted assets instead (add_docs_pages): no CDN
        redoc_url=None,
    )
    app.state.runtime = runtime  # what the routes' dependencies read (app/api/deps.py)
    # Every path needs an API key where the server has any, unless it is routed on `public`
    # (security.ApiKeyGate, installed below: checked before the body is read).
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(public)
    add_exception_handlers(app, settings.retry_after_s)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_size, timeout_s=settings.body_timeout_s, refusals=runtime.refusals
    )
    install_security(
        app, settings, runtime.refusals, OPEN_ROUTES
    )  # key gate, then CORS outermost: refusals carry its headers
    app.add_middleware(RequestIdMiddleware)  # outside even CORS: every answer and log line has the id
    add_event_schemas(app)
    add_docs_pages(app)
    return app
