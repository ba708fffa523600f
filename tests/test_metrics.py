"""GET /metrics: Prometheus text that follows what the service really did."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.api import create_app
from app.api.runtime import ModelState
from app.api.schemas import EngineInfo, Readiness
from app.engine.stats import COUNTERS, OUTCOMES, EngineStats, StatsSnapshot
from tests.support.metrics import idle, scrape
from tests.support.service import Service, settings_for

pytestmark = pytest.mark.anyio


async def test_metrics_count_requests_batching_and_durations(tiny_checkpoint_dir):
    service = Service(settings_for(tiny_checkpoint_dir))
    async with service as client:
        await idle(service.engine)
        before = await scrape(client)
        assert before[("storydiff_model_state", (("state", "ready"),))] == 1
        assert before[("storydiff_model_state", (("state", "loading"),))] == 0
        for seed in (1, 2):
            assert (await client.post("/generate", json={"steps": 6, "seed": seed})).status_code == 200
        assert (await client.post("/generate", json={"steps": 0})).status_code == 422  # never reaches the engine
        await idle(service.engine)
        after = await scrape(client)
        counted = service.engine.stats.snapshot()
    outcomes = {dict(labels)["outcome"]: value for (name, labels), value in after.items() if "outcome" in dict(labels)}
    assert outcomes == {outcome: getattr(counted, outcome) for outcome in OUTCOMES}  # every label is a counter
    states = {dict(labels)["state"] for name, labels in after if name == "storydiff_model_state"}
    assert states == set(get_args(ModelState))

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
    assert dict(build)["model"] == tiny_checkpoint_dir.name and dict(build)["device"] == "cpu"  # no path


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


def test_engine_counters_are_declared_once():
    snapshot_fields = {f.name for f in fields(StatsSnapshot)}
    assert set(OUTCOMES) <= set(COUNTERS) <= snapshot_fields
    assert set(EngineInfo.model_fields) == snapshot_fields | {"max_batch", "max_queue", "timeout_s"}
    assert set(Readiness.model_json_schema()["properties"]["status"]["enum"]) == set(get_args(ModelState))
    stats = EngineStats()
    engine_counts = ("iterations", "submitted", "rejected", "cancelled", "timed_out", "failed")  # what engine.py counts
    for name in engine_counts:
        stats.count(name)
    snapshot = stats.snapshot()
    assert all(getattr(snapshot, name) == 1 for name in engine_counts)
    with pytest.raises(KeyError):
        stats.count("finished")  # a name that is not declared is an error, not a counter nobody reads
