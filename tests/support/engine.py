"""A receiver for the engine's published updates, for tests that submit requests to an Engine."""

from __future__ import annotations

import threading

from app.engine import Engine, Failed, Finished, GenerationSpec, StepUpdate


class Collector:
    """A `Publish` receiver for tests: keeps every update and signals the outcome."""

    def __init__(self) -> None:
        self.updates: list = []
        self.ended = threading.Event()

    def __call__(self, update) -> None:
        self.updates.append(update)
        if isinstance(update, (Finished, Failed)):
            self.ended.set()

    def outcome(self, timeout: float = 20.0):
        assert self.ended.wait(timeout), "the request never ended"
        return self.updates[-1]

    @property
    def steps(self) -> list[StepUpdate]:
        return [u for u in self.updates if isinstance(u, StepUpdate)]


def run_all(engine: Engine, specs: list[GenerationSpec], timeout_s: float = 120.0) -> list[tuple[Finished, list]]:
    """Start `engine`, submit every spec at once, let them all finish; each outcome and its step updates."""
    engine.start()
    updates: list[list] = [[] for _ in specs]
    try:
        for spec, received in zip(specs, updates, strict=True):
            engine.submit(spec, received.append, timeout_s=timeout_s)
        engine.stop(grace_s=timeout_s)
    finally:
        engine.stop()
    return [(u[-1], [s for s in u if isinstance(s, StepUpdate)]) for u in updates]
