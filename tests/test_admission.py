"""Admission on its own: the fair queue's turns, the finish-time estimate, client identity, the step-cost fit."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from app.api.admission import finish_times
from app.api.clients import client_address
from app.diffusion.sampler_settings import SamplerSettings
from app.engine import GenerationSpec, RequestHandle
from app.engine.fair_queue import FairQueue
from app.engine.forward_plan import ForwardCost
from app.engine.step_cost import IterationCost, StepCostModel, Work


def handle(client: str, steps: int = 8, length: int = 8) -> RequestHandle:
    spec = GenerationSpec((), length, SamplerSettings(steps=steps), seed=0)
    return RequestHandle(spec, lambda update: None, time.monotonic() + 60, client=client)


def test_the_fair_queue_takes_clients_in_turn_not_first_come_first_served():
    queue = FairQueue()
    greedy = [handle("greedy") for _ in range(4)]
    alice, bob = handle("alice"), handle("bob")
    for h in [*greedy, alice, bob]:  # the greedy client queued everything first
        queue.append(h)
    expected = [greedy[0], alice, bob, greedy[1], greedy[2], greedy[3]]
    assert queue.order() == expected, "each client's turn in order, its own requests oldest first"
    assert [queue.popleft() for _ in range(len(queue))] == expected
    assert not queue


def test_the_fair_queue_puts_a_new_request_where_it_will_wait():
    queue = FairQueue()
    early = [handle("greedy"), handle("greedy")]
    for h in early:
        queue.append(h)
    late = handle("late")
    assert queue.order(late) == [early[0], late, early[1]]
    queue.remove(early[0])
    assert queue.order() == [early[1]] and len(queue) == 1


COST = IterationCost(ForwardCost(per_pass_s=0.01, per_position_s=0.0), base_s=0.0, per_position_s=0.005 / 16, scale=1.0)


def test_the_estimate_counts_the_steps_that_skip_the_model():
    # 1024 steps over 16 positions: 16 forwards, and 1008 steps of engine work (5 ms a 16-token row) no forward pays for
    work = [Work.of(handle("a", steps=1024, length=16), 0, 0, running=False)]
    (finish,) = finish_times(work, COST, max_batch=4)
    assert finish == pytest.approx(1024 * 0.005 + 16 * 0.01)


def test_queued_work_waits_for_a_slot_and_shares_the_batch_after():
    a, b = (Work.of(handle(c, steps=100, length=100), 0, 0, running=c == "a") for c in "ab")
    alone = finish_times([a], COST, max_batch=1)[0]
    first, second = finish_times([a, b], COST, max_batch=1)
    assert first == pytest.approx(alone) and second == pytest.approx(2 * alone), "one slot: b waits for a"
    together = finish_times([a, b], COST, max_batch=2)
    assert together[0] == together[1] > alone, "two rows: both slower than one alone, neither waits"


def test_the_step_cost_fit_separates_a_fixed_cost_from_the_cost_per_position():
    model = StepCostModel(ForwardCost(0.0, 0.0))
    for positions in [16, 32, 64, 128] * 20:
        iteration_s = 0.002 + 0.0001 * positions + 0.01
        model.observe(positions, iteration_s=iteration_s, forward_s=0.01, predicted_forward_s=0.005)
    cost = model.snapshot()
    assert cost.base_s == pytest.approx(0.002) and cost.per_position_s == pytest.approx(0.0001)
    assert cost.scale == pytest.approx(2.0), "forwards ran twice as slow as the warm-up measured"


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        ("10.0.0.5", "203.0.113.7, 10.0.0.9", ["10.0.0.0/8"], "203.0.113.7"),  # the proxy's first hop
        ("198.51.100.1", "203.0.113.7", ["10.0.0.0/8"], "198.51.100.1"),  # anyone can send the header
        ("10.0.0.5", "203.0.113.7", [], "10.0.0.5"),  # no proxy trusted
        ("10.0.0.5", None, ["10.0.0.5"], "10.0.0.5"),
    ],
)
def test_a_client_is_its_address_or_a_trusted_proxys_first_forwarded_hop(peer, forwarded, proxies, client):
    assert client_address(peer, forwarded, proxies) == client


def test_a_request_that_ends_before_its_first_step_hands_back_its_canvas_as_the_draft(cased_tokenizer):
    from types import SimpleNamespace

    from app.api.events import error_event
    from app.api.jobs import Job
    from app.engine import Failed

    spec = GenerationSpec((101, 102), 6, SamplerSettings(steps=6), seed=0, pinned=((5, 103),))
    assert spec.start_ids(0) == (101, 102, 0, 0, 0, 103)
    checkpoint = SimpleNamespace(mask_id=cased_tokenizer.mask_token_id, tokenizer=cased_tokenizer)
    error = error_event(Failed("shutdown", "the server is shutting down"), Job(spec, "m"), checkpoint)
    assert error.draft is not None and error.error == "shutdown"


class FakeEngine:
    """What admission reads of an engine: its admitted work, measured cost, batch size and counters."""

    def __init__(self, work: list[Work]) -> None:
        from app.engine import EngineStats

        self.work, self.max_batch, self.stats = work, 4, EngineStats()
        self.step_cost = SimpleNamespace(snapshot=lambda: COST)

    def workload(self, extra: RequestHandle | None = None) -> list[Work]:
        return self.work + ([Work.of(extra, 0, 0, running=False)] if extra is not None else [])


def serving_with(work: list[Work], **settings):
    from app.config import Settings

    config = Settings(**{"timeout": 10, "client_max_requests": None, "client_max_cost": None, **settings})
    return SimpleNamespace(settings=config, engine=FakeEngine(work), streams=SimpleNamespace(detached=lambda c: []))


def running(steps: int, deadline_in_s: float) -> Work:
    h = handle("old", steps=steps, length=16)
    h.deadline = time.monotonic() + deadline_in_s
    return Work.of(h, 0, 0, running=True)


def test_a_request_that_would_make_an_admitted_one_late_is_refused():
    from app.api.admission import TooMuchWork, admit

    on_time = running(steps=1000, deadline_in_s=9.0)  # alone 1000 x 15 ms = 5 s (x1.5 = 7.5 s): on time
    serving = serving_with([on_time], timeout=60)  # the new one would finish within its own timeout
    with pytest.raises(TooMuchWork) as refused:  # beside it the old one takes ~10 s: late
        admit(handle("new", steps=1000, length=16).spec, serving, "new")
    assert refused.value.retry_after_s >= 5.0, "Retry-After: when the admitted one ends"
    admit(handle("new", steps=100, length=16).spec, serving, "new")  # a short one fits beside it


def test_an_admitted_request_found_behind_its_deadline_is_counted_once():
    from app.api.admission import admit

    serving = serving_with([running(steps=1000, deadline_in_s=2.0)])  # 5 s of work left, 2 s to go
    for _ in range(2):
        admit(handle("new", steps=10, length=16).spec, serving, "new")
    assert serving.engine.stats.snapshot().behind == 1


def test_iterations_too_alike_to_separate_a_fixed_cost_are_read_all_per_position():
    model = StepCostModel(ForwardCost(0.0, 0.0))
    for i in range(300):  # a steady batch whose noise happens to follow 1% more positions: no slope in that
        positions = 768 if i % 2 else 760
        model.observe(
            positions, iteration_s=0.03 + (0.002 if i % 2 else -0.002), forward_s=0.0, predicted_forward_s=0.0
        )
    cost = model.snapshot()
    assert cost.base_s == 0.0 and cost.per_position_s == pytest.approx(0.03 / 764, rel=0.05)
