"""Fixtures for the tests that call the app in process: the anyio backend, and one service a module."""

from __future__ import annotations

import pytest

from tests.support.service import Service, settings_for


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """asyncio only, once a module, so that a module's service outlives its tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tiny_checkpoint_dir):
    """An httpx client of the app on the tiny checkpoint, with its engine running, for the module."""
    async with Service(settings_for(tiny_checkpoint_dir)) as client:
        yield client
