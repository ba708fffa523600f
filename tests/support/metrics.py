"""GET /metrics scraped into samples, and waiting for an engine to go idle before counting."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from Prometheus text (parsing fails on a bad exposition)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


async def idle(engine, within_s: float = 5.0) -> None:
    """Wait until no request is active or waiting. The engine counts a request just after publishing its
    end, so a client may hold its answer (and the warm-up may have ended) a moment before the counters
    show it."""
    deadline = time.monotonic() + within_s
    while (stats := engine.stats.snapshot()).active or stats.waiting:
        assert time.monotonic() < deadline, f"the engine stayed busy: {stats}"
        await asyncio.sleep(0.005)
