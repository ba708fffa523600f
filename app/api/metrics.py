"""GET /metrics: the runtime and engine counters in the Prometheus text format, read at scrape time.

A collector reads the engine's own thread-safe counters when Prometheus scrapes, so the engine keeps
no Prometheus objects and each app has its own registry (no process-wide state).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from app import __version__
from app.api.runtime import ModelRuntime
from app.api.schemas import Readiness

MODEL_STATES = get_args(Readiness.model_fields["status"].annotation)  # what GET /ready can say
OUTCOMES = ("submitted", "completed", "cancelled", "timed_out", "failed", "rejected")


class RuntimeCollector(Collector):
    """Metric families for one runtime: model state and build info always, engine counters once loaded."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator:
        runtime = self.runtime
        state = GaugeMetricFamily("storydiff_model_state", "1 for the model's current state.", labels=["state"])
        for name in MODEL_STATES:
            state.add_metric([name], 1.0 if runtime.state == name else 0.0)
        yield state
        checkpoint, engine = runtime.checkpoint, runtime.engine
        build = InfoMetricFamily("storydiff_build", "Version, model, device and dtype being served.")
        build.add_metric(
            [],
            {
                "version": __version__,
                "model": checkpoint.source if checkpoint else str(runtime.settings.model),
                "device": str(checkpoint.device) if checkpoint else "",
                "dtype": str(checkpoint.dtype).removeprefix("torch.") if checkpoint else "",
            },
        )
        yield build
        if engine is None:
            return
        stats = engine.stats.snapshot()
        requests = CounterMetricFamily(
            "storydiff_requests", "Generation requests by outcome (rejected: queue full, 429).", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            requests.add_metric([outcome], getattr(stats, outcome))
        yield requests
        yield CounterMetricFamily(
            "storydiff_engine_iterations",
            "Engine steps; each advances every active sequence by one.",
            value=stats.iterations,
        )
        yield CounterMetricFamily(
            "storydiff_forward_passes",
            "Model forward passes (steps that reveal nothing skip the model).",
            value=stats.forward_calls,
        )
        yield CounterMetricFamily(
            "storydiff_forward_sequences",
            "Sequences over all forward passes; divided by forward passes, the mean batch size.",
            value=sum(size * passes for size, passes in stats.batch_sizes.items()),
        )
        yield GaugeMetricFamily("storydiff_active_sequences", "Sequences in the running batch.", value=stats.active)
        yield GaugeMetricFamily("storydiff_waiting_requests", "Requests queued for a batch slot.", value=stats.waiting)
        yield GaugeMetricFamily("storydiff_max_batch", "Batch slots.", value=engine.max_batch)
        yield GaugeMetricFamily(
            "storydiff_max_queue", "Queue places before requests get a 429.", value=engine.max_queue
        )
        durations = engine.stats.durations()
        histogram = HistogramMetricFamily(
            "storydiff_request_duration_seconds", "Completed requests, from submission to the last step."
        )
        buckets = [(repr(bound), n) for bound, n in durations.buckets.items()] + [("+Inf", durations.count)]
        histogram.add_metric([], buckets, sum_value=durations.sum_s)
        yield histogram


def add_metrics(app: FastAPI, runtime: ModelRuntime) -> None:
    """Serve GET /metrics for `runtime` from a registry of this app's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))

    @app.get(
        "/metrics",
        summary="Prometheus metrics: model state, requests, batching, durations",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
