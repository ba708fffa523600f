"""The service in-process: its app with the lifespan running, and an httpx client that talks to it."""

from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager

from app.api import create_app
from app.config import Settings


def settings_for(model_dir, **overrides) -> Settings:
    return Settings(model=str(model_dir), device="cpu", ping_interval=0, **overrides)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        await asyncio.sleep(0.02)


class Service:
    """An app under test with its lifespan running, and a client that talks to it in-process."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = LifespanManager(self.app, startup_timeout=60, shutdown_timeout=60)
        await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self._lifespan.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30)
        await wait_ready(self.client)
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)

    @property
    def engine(self):
        return self.app.state.runtime.loaded.engine
