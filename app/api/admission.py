"""What a request may cost before the engine takes it: a cap on steps × length, a quota per client, and
no work that cannot finish within the timeout, its own or anyone's already admitted.

The estimate simulates the engine on the work admitted now (each running request's steps and
forwards left, then the queue in the fair queue's order, this request where it would wait) with the
iteration cost the engine measures as it runs (`app.engine.step_cost`: its forwards and its work on
every row, on steps that skip the model too):

    iteration_s = base_s + per_position_s × Σ L + scale × Σ_lengths (per_pass_s × P(a pass) + per_position_s × L × Σ f)
    f           = forwards left / steps left     a row's chance to need the model at a step
    P(a pass)   = min(1, Σ f over the distinct schedules)    rows on one schedule reveal at the same steps

one phase per request that finishes. A request is admitted when it finishes within `timeout` with
the margin (`estimate × admission_margin ≤ timeout`) and no request admitted earlier, on time with
the margin before, loses that by it. A refusal is a 429 whose `Retry-After` is when enough of the
work ahead will have finished; a request that cannot finish even alone is a 422. An admitted request
that the estimate later finds behind its deadline is counted (`storydiff_requests_behind_total`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Sequence

from fastapi.exceptions import RequestValidationError

from app.api.runtime import Serving
from app.engine import GenerationSpec, RequestHandle
from app.engine.step_cost import IterationCost, Work


class TooMuchWork(Exception):
    """The request would not finish within the timeout with the work admitted now: a 429."""

    def __init__(self, estimate_s: float, timeout_s: float, admitted: int, retry_after_s: float) -> None:
        super().__init__(
            f"with {admitted} requests running or queued, this one would take about {estimate_s:.0f} s (with the "
            f"server's margin), longer than its timeout of {timeout_s:g} s, or make an admitted one miss its "
            "own; retry after Retry-After seconds, or ask for fewer steps or a shorter length"
        )
        self.estimate_s, self.timeout_s = estimate_s, timeout_s
        self.retry_after_s = retry_after_s


class ClientOverQuota(Exception):
    """The client already has its share of the server in flight (detached streams included): a 429."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


def finish_times(work: Sequence[Work], cost: IterationCost, max_batch: int) -> list[float]:
    """Seconds from now until each request of `work` (running first, then in admission order) finishes."""
    steps = [float(w.steps_left) for w in work]
    forwards = [float(w.forwards_left) for w in work]
    finish = [0.0] * len(work)
    batch = [i for i, w in enumerate(work) if w.running]
    queue = deque(i for i, w in enumerate(work) if not w.running)
    now = 0.0
    while batch or queue:
        while queue and len(batch) < max_batch:
            batch.append(queue.popleft())
        k = min(steps[i] for i in batch)
        if k > 0:
            share = {i: forwards[i] / steps[i] for i in batch}
            positions = sum(work[i].length for i in batch)
            now += k * cost.of(positions, _forward_s(work, batch, steps, share, cost))
            for i in batch:
                steps[i] -= k
                forwards[i] = max(forwards[i] - k * share[i], 0.0)
        for i in [i for i in batch if steps[i] <= 0]:
            finish[i] = now
            batch.remove(i)
    return finish


def _forward_s(
    work: Sequence[Work], batch: list[int], steps: list[float], share: dict[int, float], cost: IterationCost
) -> float:
    """The expected forward seconds of one iteration: one pass per length group that needs the model.
    Rows at the same point of the same schedule reveal at the same steps (the schedule is not random),
    so they share their passes; other rows' passes are counted as if they never coincided."""
    positions: dict[int, float] = defaultdict(float)
    passes: dict[int, dict[tuple[int, int, float], float]] = defaultdict(dict)
    for i in batch:
        w = work[i]
        positions[w.length] += share[i] * w.length
        passes[w.length][(w.handle.spec.sampler.steps, w.handle.spec.written, steps[i])] = share[i]
    forward = cost.forward
    return sum(
        forward.per_pass_s * min(1.0, sum(passes[length].values())) + forward.per_position_s * n
        for length, n in positions.items()
    )


def admit(spec: GenerationSpec, serving: Serving, client: str = "") -> None:
    """Refuse `spec` before it is submitted: 422 over the cost cap or when it alone cannot finish in
    time, ClientOverQuota (429) past the client's share, TooMuchWork (429) when it or admitted work
    would not finish in time."""
    settings = serving.settings
    cap_cost(spec.sampler.steps, spec.length, settings.max_request_cost)
    engine = serving.engine
    candidate = RequestHandle(spec, lambda update: None, time.monotonic() + settings.timeout_s, client=client)
    work = engine.workload(candidate)  # cancelled requests leave at the next step: not counted
    work = [w for w in work if not w.handle.cancelled]
    if not _within_quota(work, client, serving):
        work = [w for w in engine.workload(candidate) if not w.handle.cancelled]
        _check_quota(work, client, serving)
    model = engine.step_cost
    if not settings.refuse_over_timeout or model is None:
        return
    _check_time(work, candidate, model.snapshot(), serving)


def cap_cost(steps: int, length: int, cap: int | None) -> None:
    """422 on `steps` when steps × length passes `cap`, `max_request_cost` (/generate, /canvas and /v1 alike)."""
    cost = steps * length
    if cap is not None and cost > cap:
        raise _invalid(
            f"steps x length is {steps} x {length} = {cost}, above this server's cap of "
            f"{cap} (max_request_cost); ask for fewer steps or a shorter length"
        )


def _client_work(work: Sequence[Work], client: str) -> list[Work]:
    return [w for w in work if w.handle.client == client]


def _over(work: Sequence[Work], client: str, serving: Serving) -> str | None:
    """Why `client`'s work (the candidate, last of it, included) passes its quota; None within it."""
    settings, mine = serving.settings, _client_work(work, client)
    if settings.client_max_requests is not None and len(mine) > settings.client_max_requests:
        return f"{len(mine) - 1} requests (client_max_requests {settings.client_max_requests})"
    cost = sum(w.handle.spec.sampler.steps * w.length for w in mine)
    if settings.client_max_cost is not None and cost > settings.client_max_cost:
        return f"{cost - mine[-1].handle.spec.sampler.steps * mine[-1].length} steps x length in flight " + (
            f"and this request's would pass client_max_cost {settings.client_max_cost}"
        )
    return None


def _within_quota(work: Sequence[Work], client: str, serving: Serving) -> bool:
    """True within the quota; else cancels the client's detached streams, oldest first, while that
    alone would bring it within (a client that drops many streams loses its oldest first)."""
    if _over(work, client, serving) is None:
        return True
    detached = serving.streams.detached(client)
    kept = list(work)
    for n, stream in enumerate(detached, start=1):
        kept = [w for w in kept if w.handle is not stream.handle]
        if _over(kept, client, serving) is None:
            for old in detached[:n]:
                old.cancel()
            return False  # cancelled: the caller takes the workload again
    return False


def _check_quota(work: Sequence[Work], client: str, serving: Serving) -> None:
    over = _over(work, client, serving)
    if over is None:
        return
    retry = 1.0
    model = serving.engine.step_cost
    if model is not None:  # when the client's first request in flight should finish
        finishes = finish_times(work, model.snapshot(), serving.engine.max_batch)
        retry = min((f for f, w in zip(finishes, work, strict=True) if w.handle.client == client), default=1.0)
    raise ClientOverQuota(
        f"this client already has {over} running, queued or awaiting resume; retry after Retry-After seconds, "
        "when one of them ends, or cancel one (DELETE /generate/{id})",
        retry,
    )


def _check_time(work: list[Work], candidate: RequestHandle, cost: IterationCost, serving: Serving) -> None:
    """TooMuchWork unless `candidate` and every request on time now still finish in time with it."""
    settings, engine, now = serving.settings, serving.engine, time.monotonic()
    margin, timeout = settings.admission_margin, settings.timeout_s
    alone = finish_times([w for w in work if w.handle is candidate], cost, engine.max_batch)[0]
    if alone * margin > timeout:
        raise _invalid(
            f"this request alone would take about {alone:.0f} s on this server (x{margin:g} margin), longer "
            f"than its timeout of {timeout:g} s; ask for fewer steps or a shorter length"
        )
    others = [w for w in work if w.handle is not candidate]
    before = finish_times(others, cost, engine.max_batch)
    after = dict(zip((w.handle for w in work), finish_times(work, cost, engine.max_batch), strict=True))
    endangered = []
    for w, finish in zip(others, before, strict=True):
        budget = w.handle.deadline - now
        if finish > budget and not w.handle.late:
            w.handle.late = True  # counted once: the estimate says it will miss its deadline
            engine.stats.count("behind")
        if finish * margin <= budget < after[w.handle] * margin:
            endangered.append(finish)
    estimate = after[candidate]
    if estimate * margin <= timeout and not endangered:
        return
    excess = max(estimate * margin - timeout, 0.0)
    retry = min([f for f in before if f >= excess] + endangered, default=excess)
    raise TooMuchWork(estimate * margin, timeout, len(others), max(retry, excess))


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", "steps"), "msg": message}])
