"""The HTTP API: `create_app(settings)` builds the FastAPI app whose lifespan owns the engine."""

from app.api.app import create_app

__all__ = ["create_app"]
