"""The batching engine on a tiny random DistilBERT: batch-invariance, streaming, bounds, departures."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.sampling import plan_step
from app.engine import (
    Engine,
    EngineStopped,
    Failed,
    Finished,
    GenerationSpec,
    QueueFull,
    Reveal,
    StepUpdate,
    UpdateChannel,
)
from app.engine.batch import NewRow, RunningBatch
from app.engine.forward_plan import ONE_PASS, ForwardCost
from tests.support.engine import Collector


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


def slow(forward, delay_s: float):
    """`forward` that takes at least `delay_s`: keeps requests in the batch long enough to observe."""

    def run(x, query, attention_mask):
        time.sleep(delay_s)
        return forward(x, query, attention_mask)

    return run


@pytest.fixture
def make_engine(ckpt):
    engines: list[Engine] = []

    def make(delay_s: float = 0.0, forward=None, **kwargs) -> Engine:
        forward = forward or functools.partial(logits_at, ckpt.model)
        if delay_s:
            forward = slow(forward, delay_s)
        engine = Engine(forward, mask_id=ckpt.mask_id, pad_id=ckpt.tokenizer.pad_token_id, **kwargs)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def spec(length=32, steps=8, seed=0, prefix=(), stream_every=None, **sampler) -> GenerationSpec:
    return GenerationSpec(tuple(prefix), length, SamplerSettings(steps=steps, **sampler), seed, stream_every)


def generate(engine: Engine, request: GenerationSpec, timeout_s: float = 60.0):
    collector = Collector()
    engine.submit(request, collector, timeout_s)
    return collector.outcome(), collector


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_story_has_no_mask_and_keeps_its_prefix(make_engine, ckpt):
    engine = make_engine()
    prefix = (101, 1332, 1235)
    outcome, _ = generate(engine, spec(length=24, steps=6, prefix=prefix, temperature=1.0))
    assert isinstance(outcome, Finished)
    assert len(outcome.ids) == 24 and outcome.num_steps == 6
    assert outcome.ids[:3] == prefix
    assert ckpt.mask_id not in outcome.ids


@pytest.mark.parametrize("remasking", ["random", "low_confidence"])
def test_same_seed_same_story_alone_and_in_a_busy_batch(make_engine, remasking):
    """Batch-invariance: longer neighbours (so padding and an attention mask) change nothing."""
    mine = spec(length=24, steps=12, seed=7, remasking=remasking, temperature=1.0, stream_every=1)
    alone, alone_steps = generate(make_engine(), mine)

    engine = make_engine(delay_s=0.002, max_batch=8)
    others = [Collector() for _ in range(4)]
    for i, collector in enumerate(others):
        other = spec(length=28 + 6 * i, steps=16, seed=100 + i, remasking="low_confidence", temperature=0.5)
        engine.submit(other, collector, 60.0)
    busy, busy_steps = generate(engine, mine)
    assert all(not collector.ended.is_set() for collector in others)  # they ran all along
    for collector in others:
        assert isinstance(collector.outcome(), Finished)

    assert isinstance(alone, Finished) and isinstance(busy, Finished)
    assert busy.ids == alone.ids
    # Same tokens could hide changed logits; the probabilities show them, up to float noise.
    reveals = [[(r.pos, r.id, r.p) for r in update.changed] for update in busy_steps.steps]
    expected = [[(r.pos, r.id, pytest.approx(r.p, rel=1e-4)) for r in u.changed] for u in alone_steps.steps]
    assert reveals == expected
    assert engine.stats.snapshot().max_batch_size == 5  # it really shared forward passes


def test_different_seeds_differ(make_engine):
    engine = make_engine()
    first, _ = generate(engine, spec(seed=1, temperature=1.0))
    second, _ = generate(engine, spec(seed=2, temperature=1.0))
    assert first.ids != second.ids


def test_stream_every_sends_every_kth_and_the_last_step_losing_no_reveal(make_engine, ckpt):
    engine = make_engine()
    prefix = (101, 1332)
    outcome, collector = generate(engine, spec(length=30, steps=10, prefix=prefix, stream_every=3))
    assert [u.step for u in collector.steps] == [3, 6, 9, 10]
    revealed = [r for u in collector.steps for r in u.changed]
    assert sorted(r.pos for r in revealed) == list(range(len(prefix), 30))  # each masked position once
    assert all(outcome.ids[r.pos] == r.id and 0 < r.p <= 1 for r in revealed)
    assert collector.steps[-1].ids == outcome.ids and collector.steps[-1].t == 0


def test_no_steps_published_unless_streaming(make_engine):
    outcome, collector = generate(make_engine(), spec(stream_every=None))
    assert isinstance(outcome, Finished) and collector.steps == []


def test_steps_that_reveal_nothing_skip_the_forward(make_engine):
    engine = make_engine()
    generate(engine, spec(length=24, steps=200, remasking="random"))
    stats = engine.stats.snapshot()
    assert stats.iterations == 200
    assert stats.forward_calls < stats.iterations


def test_batch_never_exceeds_max_batch_and_queue_is_bounded(make_engine):
    engine = make_engine(delay_s=0.01, max_batch=2, max_queue=1)
    collectors = [Collector() for _ in range(3)]
    for collector in collectors:
        engine.submit(spec(steps=6, remasking="low_confidence"), collector, 60.0)
    with pytest.raises(QueueFull):
        engine.submit(spec(), Collector(), 60.0)
    assert all(isinstance(c.outcome(), Finished) for c in collectors)
    stats = engine.stats.snapshot()
    assert stats.max_batch_size == 2 and stats.rejected == 1 and stats.completed == 3
    engine.submit(spec(), Collector(), 60.0)  # room again once they finished


def test_cancelled_request_leaves_the_batch_within_one_step(make_engine):
    engine = make_engine(delay_s=0.02)
    collector = Collector()
    handle = engine.submit(spec(length=48, steps=48, remasking="low_confidence", stream_every=1), collector, 60.0)
    wait_until(lambda: len(collector.steps) >= 2)
    assert engine.stats.snapshot().active == 1
    handle.cancel()
    iterations = engine.stats.snapshot().iterations
    wait_until(lambda: engine.stats.snapshot().active == 0, timeout_s=1.0)
    stats = engine.stats.snapshot()
    assert stats.cancelled == 1 and stats.completed == 0
    assert stats.iterations <= iterations + 1
    assert not collector.ended.is_set()  # a cancelled request gets no outcome: nobody listens


def test_cancelled_while_queued_never_runs(make_engine):
    engine = make_engine(delay_s=0.02, max_batch=1)
    first = Collector()
    engine.submit(spec(steps=8, remasking="low_confidence"), first, 60.0)
    queued = engine.submit(spec(steps=8), Collector(), 60.0)
    queued.cancel()
    assert isinstance(first.outcome(), Finished)
    wait_until(lambda: engine.stats.snapshot().cancelled == 1)
    assert engine.stats.snapshot().completed == 1


def test_request_times_out(make_engine):
    engine = make_engine(delay_s=0.02)
    outcome, _ = generate(engine, spec(steps=40, remasking="low_confidence"), timeout_s=0.1)
    assert isinstance(outcome, Failed) and outcome.reason == "timeout"
    wait_until(lambda: engine.stats.snapshot().active == 0)


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(make_engine, ckpt):
    calls = {"n": 0}

    def flaky(x, query, attention_mask):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return logits_at(ckpt.model, x, query, attention_mask)

    engine = make_engine(forward=flaky)
    failed, _ = generate(engine, spec(remasking="low_confidence"))
    assert isinstance(failed, Failed) and failed.reason == "internal"
    assert isinstance(generate(engine, spec())[0], Finished)


def test_stop_fails_what_is_left_and_refuses_new_requests(make_engine):
    engine = make_engine(delay_s=0.02)
    collector = Collector()
    engine.submit(spec(length=48, steps=48, remasking="low_confidence"), collector, 60.0)
    wait_until(lambda: engine.stats.snapshot().forward_calls >= 1)
    engine.stop(grace_s=0.0)
    outcome = collector.outcome()
    assert isinstance(outcome, Failed) and outcome.reason == "shutdown"
    assert outcome.draft is not None and len(outcome.draft) == 48, "shutdown hands back the draft, as a timeout"
    with pytest.raises(EngineStopped):
        engine.submit(spec(), Collector(), 60.0)
    assert not engine.running


def test_stop_with_grace_lets_inflight_requests_finish(make_engine):
    engine = make_engine(delay_s=0.005)
    collector = Collector()
    engine.submit(spec(steps=8, remasking="low_confidence"), collector, 60.0)
    engine.stop(grace_s=10.0)
    assert isinstance(collector.outcome(timeout=0), Finished)


def test_channel_coalesces_steps_for_a_slow_reader():
    async def scenario():
        channel = UpdateChannel(asyncio.get_running_loop())
        ids = (5, 6, 7)

        def engine_thread():
            for step in (1, 2, 3):
                channel.publish(StepUpdate(step, 3, 1 - step / 3, ids, (Reveal(step - 1, 5 + step, 0.5),)))
            channel.publish(Finished(ids, 3, 0.1))

        await asyncio.to_thread(engine_thread)
        await asyncio.sleep(0)  # let the hand-offs run
        merged = await channel.next()
        assert isinstance(merged, StepUpdate) and merged.step == 3
        assert [r.pos for r in merged.changed] == [0, 1, 2]
        assert isinstance(await channel.next(), Finished)
        assert await channel.next() is None

    asyncio.run(scenario())


def test_generation_spec_rejects_a_prefix_longer_than_the_length():
    with pytest.raises(ValueError, match="prefix"):
        spec(length=2, prefix=(1, 2, 3))


@pytest.mark.parametrize("cost", [ONE_PASS, ForwardCost(per_pass_s=0.0, per_position_s=1.0)], ids=["padded", "split"])
def test_rows_of_different_lengths_get_the_logits_they_get_alone(ckpt, cost):
    """One padded pass (attention mask) or one pass per length group: each row's logits as alone."""
    forward = functools.partial(logits_at, ckpt.model)
    batch = RunningBatch(ckpt.mask_id, ckpt.tokenizer.pad_token_id, torch.device("cpu"))
    batch.cost = cost
    settings = SamplerSettings(steps=4, remasking="low_confidence")
    batch.add([NewRow((101, 1332), n, settings, seed, stream_every=None) for seed, n in enumerate((12, 30, 20))])
    plan = plan_step(batch.x, batch.index, batch.rows, ckpt.mask_id)
    together, pass_sizes = batch._logits(forward, plan)
    assert pass_sizes == ([3] if cost is ONE_PASS else [1, 1, 1])
    alone = [forward(batch.x[i : i + 1, :n], plan.query[i : i + 1, :n], None) for i, n in enumerate((12, 30, 20))]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-4, rtol=1e-4)


POISON = 2999  # a token id the flaky forward below cannot take


def poisoned_forward(ckpt):
    """The real forward, failing whenever a row holds POISON: a request the model cannot run."""

    def forward(x, query, attention_mask):
        if (x == POISON).any():
            raise RuntimeError("cannot run this token")
        return logits_at(ckpt.model, x, query, attention_mask)

    return forward


def test_one_failing_request_fails_alone(make_engine, ckpt):
    engine = make_engine(forward=poisoned_forward(ckpt), max_batch=6)
    collectors = [Collector() for _ in range(6)]
    for i, collector in enumerate(collectors):
        prefix = (101, POISON) if i == 3 else (101, 1332)
        engine.submit(spec(length=20, steps=6, seed=i, prefix=prefix, remasking="low_confidence"), collector, 60.0)
    outcomes = [collector.outcome() for collector in collectors]
    assert isinstance(outcomes[3], Failed) and outcomes[3].reason == "internal"
    assert all(isinstance(o, Finished) for i, o in enumerate(outcomes) if i != 3)
    stats = engine.stats.snapshot()
    assert stats.failed == 1 and stats.completed == 5


def test_a_request_that_cannot_join_fails_alone(make_engine, monkeypatch):
    from app.engine.batch import RunningBatch

    add = RunningBatch.add

    def picky_add(self, rows):
        if any(row.seed == 666 for row in rows):
            raise ValueError("cannot place this row")
        add(self, rows)

    monkeypatch.setattr(RunningBatch, "add", picky_add)
    engine = make_engine(delay_s=0.01, max_batch=4)
    good, bad = Collector(), Collector()
    engine.submit(spec(steps=4, seed=1), good, 60.0)
    engine.submit(spec(steps=4, seed=666), bad, 60.0)
    assert isinstance(bad.outcome(), Failed) and isinstance(good.outcome(), Finished)
    assert engine.running and isinstance(generate(engine, spec(steps=3))[0], Finished)


def test_a_dead_engine_answers_everyone_and_says_why(ckpt):
    died: list[str] = []
    engine = Engine(
        functools.partial(logits_at, ckpt.model),
        mask_id=ckpt.mask_id,
        pad_id=ckpt.tokenizer.pad_token_id,
        max_batch=1,
        on_failure=died.append,
    )
    calls = {"n": 0}

    def broken_bookkeeping() -> None:  # the engine's own loop fails, not a step
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("bookkeeping bug")

    engine._expire_waiting = broken_bookkeeping  # type: ignore[method-assign]
    engine.start()
    collectors = [Collector() for _ in range(3)]
    for collector in collectors:
        engine.submit(spec(length=40, steps=40, remasking="low_confidence"), collector, 60.0)
    outcomes = [collector.outcome() for collector in collectors]
    assert all(isinstance(o, Failed) and o.reason == "internal" for o in outcomes)
    wait_until(lambda: not engine.running)
    assert engine.failure == "RuntimeError: bookkeeping bug" and died == [engine.failure]
    with pytest.raises(EngineStopped):
        engine.submit(spec(), Collector(), 60.0)
    engine.stop()


def test_a_timed_out_request_hands_back_its_draft(make_engine, ckpt):
    engine = make_engine(delay_s=0.02)
    outcome, _ = generate(engine, spec(length=30, steps=40, prefix=(101, 1332), remasking="low_confidence"), 0.3)
    assert isinstance(outcome, Failed) and outcome.reason == "timeout"
    assert outcome.draft is not None and len(outcome.draft) == 30 and outcome.draft[:2] == (101, 1332)
    assert 0 < outcome.draft.count(ckpt.mask_id) < 28, "some tokens revealed, some not"
