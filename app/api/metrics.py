"""GET /metrics: the runtime and engine counters in the Prometheus text format, read at scrape time.

A collector reads the engine's own thread-safe counters when Prometheus scrapes, so the engine keeps
no Prometheus objects and nothing is registered process-wide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app import __version__
from app.api.runtime import ModelRuntime
from app.api.schemas import ModelState
from app.engine.stats import FIELD_DOCS, OUTCOMES, Histogram
from app.paths import model_name


class RuntimeCollector(Collector):
    """Metric families for one runtime: model state and build info always, engine counters once loaded."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        state = GaugeMetricFamily("storydiff_model_state", "1 for the model's current state.", labels=["state"])
        for name in get_args(ModelState):
            state.add_metric([name], 1.0 if runtime.state == name else 0.0)
        yield state
        loaded = runtime.loaded
        build = InfoMetricFamily("storydiff_build", "Version, model, device and dtype being served.")
        build.add_metric(
            [],
            {
                "version": __version__,
                "model": loaded.checkpoint.name if loaded else model_name(str(runtime.settings.model)),
                "device": str(loaded.checkpoint.device) if loaded else "",
                "dtype": str(loaded.checkpoint.dtype).removeprefix("torch.") if loaded else "",
            },
        )
        yield build
        refused = CounterMetricFamily(
            "storydiff_refused_requests",
            "Requests refused before the engine saw them, by reason (413, 408, 401, 429 over the timeout).",
            labels=["reason"],
        )
        for reason, n in runtime.refusals.snapshot().items():
            refused.add_metric([reason], n)
        yield refused
        if loaded is None:
            return
        yield CounterMetricFamily(
            "storydiff_engine_failures",
            "1 once the engine thread died (/ready says why; the process exits after exit_on_engine_failure_after).",
            value=0 if loaded.engine.failure is None else 1,
        )
        engine = loaded.engine
        stats = engine.stats.snapshot()
        requests = CounterMetricFamily(
            "storydiff_requests", "Generation requests by outcome (rejected: queue full, 429).", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            requests.add_metric([outcome], getattr(stats, outcome))
        yield requests
        yield CounterMetricFamily("storydiff_requests_behind", FIELD_DOCS["behind"], value=stats.behind)
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
        yield GaugeMetricFamily("storydiff_active_sequences", FIELD_DOCS["active"], value=stats.active)
        yield GaugeMetricFamily("storydiff_waiting_requests", FIELD_DOCS["waiting"], value=stats.waiting)
        yield GaugeMetricFamily("storydiff_max_batch", "Batch slots.", value=engine.max_batch)
        yield GaugeMetricFamily(
            "storydiff_max_queue", "Queue places before requests get a 429.", value=engine.max_queue
        )
        yield _histogram(
            "storydiff_request_duration_seconds",
            "Completed requests, from submission to the last step.",
            engine.stats.durations(),
        )
        yield _histogram(
            "storydiff_request_forwards",
            "Completed requests by model forwards (steps that reveal nothing skip the model).",
            engine.stats.forwards_per_request(),
        )
        yield _histogram(
            "storydiff_request_tokens_per_forward",
            "Completed requests by tokens written (prompt and pinned tokens excluded) per model forward.",
            engine.stats.tokens_per_forward(),
        )


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    buckets = [(repr(bound), n) for bound, n in histogram.buckets.items()] + [("+Inf", histogram.count)]
    family.add_metric([], buckets, sum_value=histogram.sum)
    return family


def exposition(runtime: ModelRuntime) -> bytes:
    """What GET /metrics answers: every family of `runtime`, collected now, in the text format."""
    return generate_latest(RuntimeCollector(runtime))
