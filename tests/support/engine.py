"""A receiver for the engine's published updates, for tests that submit requests to an Engine."""

from __future__ import annotations

import threading

from app.engine import Failed, Finished, StepUpdate


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
