"""One log line for each generation the API ran: how it ended, its steps and how long it took.

Logged on the event loop in the request's context, so the line carries the request id. Never the
prompt or the story: those are the users' text. In JSON logs the numbers are fields of their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from app.engine import Failed, Finished, Outcome, RequestHandle
from app.engine.request import FailureReason

log = logging.getLogger(__name__)

Conclusion = Outcome | Literal["cancelled", "stopped"]
"""What became of a generation: the engine's outcome, the client left, or a stop string ended it. (Not
an `ending`, the fixed last words of a story, nor `endings`, the rule for where a story ends.)"""

FAILURE_OUTCOME: dict[FailureReason, str] = {
    "timeout": "timed_out",
    "shutdown": "failed",
    "internal": "failed",
    "cancelled": "cancelled",
    "taken_over": "cancelled",
}
"""Failures by the name `storydiff_requests_total` counts them under."""


def log_generation(handle: RequestHandle, conclusion: Conclusion, **fields: Any) -> None:
    """Log how the generation behind `handle` ended; `fields` (a choice index; the `request_id` where the
    context has none, e.g. on the engine's hop to the loop) join the line."""
    spec = handle.spec
    duration_s = round(time.monotonic() - handle.submitted, 4)
    record: dict[str, Any] = {
        "event": "generation",
        "engine_request": handle.id,  # what the engine's own lines about it say ("request 7 ...")
        "length": spec.length,
        "duration_s": duration_s,
        **fields,
    }
    if isinstance(conclusion, Finished):
        record.update(outcome="completed", steps=conclusion.num_steps, forwards=conclusion.forwards)
    elif isinstance(conclusion, Failed):
        record.update(outcome=FAILURE_OUTCOME[conclusion.reason], reason=conclusion.reason, steps=spec.sampler.steps)
    else:
        record.update(outcome=conclusion, steps=spec.sampler.steps)
    log.info(
        "generation %s after %.2fs: %d steps, length %d",
        record["outcome"],
        duration_s,
        record["steps"],
        spec.length,
        extra=record,
    )
