"""The static-shape forward: bucket padding is invisible, compiling is traced, failures fall back to eager."""

from __future__ import annotations

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.static_forward import StaticShapeForward, bucket_rows, bucket_width
from app.engine import Engine, Finished, GenerationSpec
from app.engine.model_forward import CheckpointForward
from tests.support.engine import Collector


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


def test_buckets():
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 8, 9, 200)] == [1, 2, 4, 8, 8, 16, 256]
    assert [bucket_width(n, 512) for n in (1, 64, 65, 300, 512)] == [64, 64, 128, 320, 512]
    assert bucket_width(40, 48) == 48  # never past the model's positions


def batch_of_mixed_lengths(ckpt):
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1000, 2000, (3, 37), generator=generator)
    query = torch.rand(3, 37, generator=generator) < 0.4
    attention_mask = torch.ones(3, 37, dtype=torch.long)
    attention_mask[1, 20:] = 0
    query[1, 20:] = False
    return x, query, attention_mask


@pytest.mark.parametrize(("compile", "backend"), [(False, "inductor"), (True, "eager")], ids=["padded", "traced"])
def test_bucketed_forward_matches_the_eager_one(ckpt, compile, backend):
    """Rows padded to 4, positions to 48 (the model's max here): each queried logit as without padding."""
    x, query, attention_mask = batch_of_mixed_lengths(ckpt)
    forward = StaticShapeForward(ckpt.model, ckpt.tokenizer.pad_token_id, ckpt.max_positions, compile, backend)
    expected = logits_at(ckpt.model, x, query, attention_mask)
    torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-4, rtol=1e-4)
    assert forward.warm_up(max_rows=5, width=32) == 4  # buckets of 8, 4, 2 and 1 rows


def test_cpu_compiles_only_when_asked(ckpt):
    assert CheckpointForward(ckpt, cpu_backend="eager").name == "eager"
    assert CheckpointForward(ckpt, compile=True).name == "compiled"


def test_a_failing_compile_falls_back_to_eager_and_the_engine_serves(ckpt, monkeypatch):
    def broken(self, max_rows, width):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(StaticShapeForward, "warm_up", broken)
    engine = Engine.from_checkpoint(ckpt, max_batch=2, compile=True)
    engine.start()
    try:
        engine.warm_up()
        assert engine.forward_name == "eager (compile failed)"
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
    forward = CheckpointForward(ckpt)
    forward.prepare(max_rows=4, width=37)
    assert forward.name == "compiled (CUDA graphs)"
    expected = logits_at(ckpt.model, x, query, attention_mask)
    for _ in range(3):  # replays, not only the recording
        torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-3, rtol=1e-3)


def test_a_shape_that_fails_to_compile_runs_eagerly_alone(ckpt, monkeypatch):
    """A compile failure in a request: that request gets eager logits, the shape stays eager (listed in
    the forward's name for /info), and other shapes keep the compiled path."""
    forward = CheckpointForward(ckpt, compile=True)
    static = forward._static
    calls = []

    def compiled(x, mask):
        calls.append(tuple(x.shape))
        if x.shape[0] == 4:
            raise RuntimeError("cannot capture this shape")
        return static._eager_encode(x, mask)

    monkeypatch.setattr(static, "_encode", compiled)
    x, query, attention_mask = batch_of_mixed_lengths(ckpt)  # 3 rows: the 4-row bucket
    expected = logits_at(ckpt.model, x, query, attention_mask)
    for _ in range(2):
        torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-4, rtol=1e-4)
    forward(x[:1], query[:1], attention_mask[:1])
    width = bucket_width(37, ckpt.max_positions)
    assert calls == [(4, width), (1, width)], "the failed shape is tried once, the others stay compiled"
    assert forward.name == f"compiled; eager for 4x{width}"
