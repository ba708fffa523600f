"""The static-shape forward: one plan of shapes, padding is invisible, failures fall back to eager per shape."""

from __future__ import annotations

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.logits import logits_at
from app.engine import Engine, Finished, GenerationSpec
from app.engine.model_forward import CheckpointForward
from app.engine.shape_plan import ShapePlan, row_buckets, width_buckets
from app.engine.static_forward import StaticShapeForward
from tests.support.engine import Collector


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


def test_the_plan_covers_every_batch_and_length_and_nothing_more():
    assert row_buckets(32) == (1, 2, 4, 8, 16, 32) and row_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert row_buckets(1) == (1,)
    assert width_buckets(512) == (64, 128, 192, 256, 320, 384, 448, 512) and width_buckets(48) == (48,)
    plan = ShapePlan.of(48, 300)
    assert len(plan) == len(plan.shapes) == 7 * 5 and plan.shapes[0] == (48, 300)
    assert [plan.bucket(n, 1) for n in (1, 3, 5, 33, 48)] == [(1, 64), (4, 64), (8, 64), (48, 64), (48, 64)]
    assert [plan.bucket(1, w)[1] for w in (64, 65, 257, 300)] == [64, 128, 300, 300]
    for rows, width in [(49, 64), (1, 301), (0, 1)]:
        with pytest.raises(AssertionError, match="the plan stops"):
            plan.bucket(rows, width)


def batch_of_mixed_lengths(ckpt):
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1000, 2000, (3, 37), generator=generator)
    query = torch.rand(3, 37, generator=generator) < 0.4
    attention_mask = torch.ones(3, 37, dtype=torch.long)
    attention_mask[1, 20:] = 0
    query[1, 20:] = False
    return x, query, attention_mask


@pytest.mark.parametrize(
    ("capture", "backend"), [("eager", "inductor"), ("compile", "eager")], ids=["padded", "traced"]
)
def test_bucketed_forward_matches_the_eager_one(ckpt, capture, backend):
    """Rows padded to 4, positions to the model's 64: each queried logit as without padding."""
    x, query, attention_mask = batch_of_mixed_lengths(ckpt)
    plan = ShapePlan.of(5, ckpt.max_positions)
    forward = StaticShapeForward(ckpt.model, ckpt.tokenizer.pad_token_id, plan, capture, backend)
    expected = logits_at(ckpt.model, x, query, attention_mask)
    torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-4, rtol=1e-4)
    assert forward.warm_up() == len(plan) == 4  # rows 5, 4, 2 and 1 at the one width
    assert sorted(forward.prepared) == sorted(plan.shapes) and not forward.late_shapes


def test_cpu_compiles_only_when_asked(ckpt):
    assert CheckpointForward(ckpt, cpu_backend="eager").name == "eager"
    assert CheckpointForward(ckpt, compile=True).name == "compiled"


def test_a_failing_compile_falls_back_to_eager_and_the_engine_serves(ckpt, monkeypatch):
    def broken(self, progress=None):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(StaticShapeForward, "warm_up", broken)
    engine = Engine.from_checkpoint(ckpt, max_batch=2, compile=True)
    engine.start()
    try:
        engine.warm_up()
        assert engine.forward_name == "eager (compile failed)"
        compiled, eager = engine.forward_shapes
        assert compiled == [] and eager == {(2, 64): "RuntimeError: no compiler here", (1, 64): eager[(1, 64)]}
        collector = Collector()
        settings = ckpt.config.sampler_settings.model_copy(update={"steps": 4})
        engine.submit(GenerationSpec((), 16, settings, seed=1), collector, 30.0)
        assert isinstance(collector.outcome(), Finished)
    finally:
        engine.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gpu tests skip without it, in CI too)")
def test_cuda_graphs_match_eager_on_gpu(tiny_checkpoint_dir):
    ckpt = load_checkpoint(tiny_checkpoint_dir, device="cuda", dtype="float32")
    x, query, attention_mask = (t.cuda() for t in batch_of_mixed_lengths(ckpt))
    forward = CheckpointForward(ckpt, max_rows=4)
    forward.prepare()
    assert forward.name == "compiled (CUDA graphs)" and len(forward.compiled_shapes) == len(forward.plan)
    expected = logits_at(ckpt.model, x, query, attention_mask)
    for _ in range(3):  # replays, not only the recording
        torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-3, rtol=1e-3)
    assert not forward._static.late_shapes


def test_a_shape_that_fails_to_compile_runs_eagerly_alone(ckpt, monkeypatch):
    """A shape whose preparation fails gets eager logits, stays eager (listed with why for /info), and
    the other shapes keep their prepared path."""
    forward = CheckpointForward(ckpt, compile=True, max_rows=4)
    static = forward._static
    calls = []

    def runner_for(x, mask):
        calls.append(tuple(x.shape))
        if x.shape[0] == 4:
            raise RuntimeError("cannot capture this shape")
        return static._eager_encode

    monkeypatch.setattr(static, "_runner_for", runner_for)
    x, query, attention_mask = batch_of_mixed_lengths(ckpt)  # 3 rows: the 4-row bucket
    expected = logits_at(ckpt.model, x, query, attention_mask)
    for _ in range(2):
        torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-4, rtol=1e-4)
    forward(x[:1], query[:1], attention_mask[:1])
    forward(x[:1], query[:1], attention_mask[:1])
    assert calls == [(4, 64), (1, 64)], "the failed shape is tried once, the others are prepared once"
    assert forward.name == "compiled; 1 of 3 shapes eager"
    assert forward.eager_shapes == {(4, 64): "RuntimeError: cannot capture this shape"}
    assert forward.compiled_shapes == [(1, 64)]
