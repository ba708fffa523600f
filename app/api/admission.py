"""What a request may cost before the engine takes it: a cap on steps × length, and no work that
cannot finish within the timeout.

A request's duration is estimated from the forward cost the engine measured at warm-up
(`per_pass_s + per_position_s × rows × length`, `app.engine.forward_plan.ForwardCost`):

    estimate = waves × forwards × cost(rows, length)
    rows     = min(admitted + 1, max_batch)      the batch it will share, itself included
    waves    = ceil((admitted + 1) / max_batch)  queued work ahead runs first
    forwards = min(steps, length - prompt)       a step that reveals nothing skips the model
                                                 (steps with `revision`: a word may be written again)

with `admitted` the requests running or queued now, each taken to be like this one. Measured with the
shipped model on 2 shared CPU cores (docs/operations.md): one default story 37-50 s estimated, 41 s
taken; the fourth of four at once 190 s estimated, 138 s taken; it leaves out the engine's own work
on steps that skip the model, so 4096 steps of 64 tokens took 14 s against 3 s estimated (the cost
cap bounds those). Without it, four default stories at once on a slower CPU server all ran for
300 s and ended in a 504 at step 176 of 256, their work thrown away.
"""

from __future__ import annotations

import math

from fastapi.exceptions import RequestValidationError

from app.api.runtime import Serving
from app.engine import Engine, GenerationSpec


class TooMuchWork(Exception):
    """The request would not finish within the timeout with the work admitted now: a 429."""

    def __init__(self, estimate_s: float, timeout_s: float, admitted: int) -> None:
        super().__init__(
            f"with {admitted} requests running or queued, this one would take about {estimate_s:.0f} s, "
            f"longer than the server's timeout of {timeout_s:g} s; retry later, or ask for fewer steps "
            "or a shorter length"
        )
        self.estimate_s, self.timeout_s = estimate_s, timeout_s


def estimate_s(spec: GenerationSpec, engine: Engine, admitted: int) -> float | None:
    """Seconds `spec` should take with `admitted` requests ahead of it; None before warm-up measured."""
    cost = engine.forward_cost
    if not math.isfinite(cost.per_pass_s):
        return None
    rows = min(admitted + 1, engine.max_batch)
    waves = math.ceil((admitted + 1) / engine.max_batch)
    writes = spec.length - len(spec.prefix) if spec.sampler.revision == 0 else spec.sampler.steps  # revisions rewrite
    forwards = min(spec.sampler.steps, writes)
    return waves * forwards * cost.of(rows, spec.length)


def admit(spec: GenerationSpec, serving: Serving) -> None:
    """Refuse `spec` before it is submitted: 422 over the cost cap or when it alone cannot finish in
    time, TooMuchWork (429) when it cannot finish in time behind the work admitted now."""
    settings = serving.settings
    cost = spec.sampler.steps * spec.length
    if settings.max_request_cost is not None and cost > settings.max_request_cost:
        raise _invalid(
            f"steps x length is {spec.sampler.steps} x {spec.length} = {cost}, above this server's cap of "
            f"{settings.max_request_cost} (max_request_cost); ask for fewer steps or a shorter length"
        )
    if not settings.refuse_over_timeout:
        return
    alone = estimate_s(spec, serving.engine, 0)
    if alone is not None and alone > settings.timeout:
        raise _invalid(
            f"this request alone would take about {alone:.0f} s on this server, longer than its timeout of "
            f"{settings.timeout:g} s; ask for fewer steps or a shorter length"
        )
    stats = serving.engine.stats.snapshot()
    admitted = stats.active + stats.waiting
    behind = estimate_s(spec, serving.engine, admitted)
    if behind is not None and behind > settings.timeout:
        raise TooMuchWork(behind, settings.timeout, admitted)


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", "steps"), "msg": message}])
