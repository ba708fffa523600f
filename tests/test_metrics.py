"""GET /metrics: Prometheus text that follows what the service really did."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from app.api import create_app
from app.engine.stats import EngineStats
from tests.test_api import Service, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


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


async def test_metrics_count_requests_batching_and_durations(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir)) as client:
        before = await scrape(client)
        assert before[("storydiff_model_state", (("state", "ready"),))] == 1
        assert before[("storydiff_model_state", (("state", "loading"),))] == 0
        for seed in (1, 2):
            assert (await client.post("/generate", json={"steps": 6, "seed": seed})).status_code == 200
        assert (await client.post("/generate", json={"steps": 0})).status_code == 422  # never reaches the engine
        after = await scrape(client)

    def grew(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("storydiff_requests_total", (("outcome", "submitted"),)) == 2
    assert grew("storydiff_requests_total", (("outcome", "completed"),)) == 2
    assert grew("storydiff_request_duration_seconds_count") == 2
    assert grew("storydiff_request_duration_seconds_sum") > 0
    assert grew("storydiff_request_duration_seconds_bucket", (("le", "+Inf"),)) == 2
    passes = grew("storydiff_forward_passes_total")
    assert 1 <= passes <= 12  # 2 stories x 6 steps at most, fewer where steps reveal nothing
    assert grew("storydiff_forward_sequences_total") >= passes
    assert after[("storydiff_max_batch", ())] >= 1 and ("storydiff_waiting_requests", ()) in after
    build = next(labels for (name, labels) in after if name == "storydiff_build_info")
    assert dict(build)["model"] == str(tiny_checkpoint_dir) and dict(build)["device"] == "cpu"


async def test_a_model_that_failed_to_load_still_has_metrics(tmp_path):
    app = create_app(settings_for(tmp_path / "missing"))
    async with LifespanManager(app) as manager:
        assert await app.state.runtime.wait_settled() is False
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            scraped = await scrape(client)
    assert scraped[("storydiff_model_state", (("state", "failed"),))] == 1
    assert not any(name.startswith("storydiff_requests") for name, _ in scraped)


def test_duration_buckets_are_cumulative():
    stats = EngineStats()
    for elapsed in (0.05, 0.3, 0.3, 7.0, 1000.0):
        stats.completed(elapsed)
    histogram = stats.durations()
    assert histogram.count == 5 and histogram.sum_s == pytest.approx(1007.65)
    assert histogram.buckets[0.1] == 1 and histogram.buckets[0.5] == 3 and histogram.buckets[10.0] == 4
    assert histogram.buckets[300.0] == 4  # 1000 s lies only under +Inf (the count)
    assert stats.snapshot().completed == 5
