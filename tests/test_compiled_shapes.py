"""Every compiled shape is prepared before /ready and nothing compiles after it (dynamo's own counters,
with the compiled path forced on the CPU through dynamo's "eager" backend); a shape whose compile fails
runs eagerly alone, logged once, listed in /info, and no request fails."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager
from torch._dynamo.utils import counters

from app.api import create_app
from app.diffusion.checkpoint import load_checkpoint, save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.text import end_token_ids
from app.engine import Engine, Finished, GenerationSpec, model_forward
from app.engine.model_forward import CheckpointForward
from app.engine.static_forward import StaticShapeForward
from tests.conftest import tiny_distilbert
from tests.support.engine import Collector
from tests.support.service import settings_for, wait_ready
from tests.support.service_fixtures import anyio_backend  # noqa: F401

MAX_BATCH = 4  # rows 1, 2, 4
POSITIONS = 192  # widths 64, 128, 192: 9 planned shapes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cased_tokenizer):
    """A tiny model with three width buckets."""
    model = tiny_distilbert(len(cased_tokenizer), max_positions=POSITIONS)
    config = DiffusionConfig(seq_len=128, trained_on="nothing: random weights for tests")
    directory = save_checkpoint(tmp_path_factory.mktemp("wide"), model, cased_tokenizer, config)
    return load_checkpoint(directory, device="cpu")


def traced_engine(ckpt) -> Engine:
    """The server's engine (as `Engine.from_checkpoint` builds it) with its compiled path on the CPU."""
    forward = CheckpointForward(ckpt, compile=True, max_rows=MAX_BATCH, backend="eager")
    pad = ckpt.tokenizer.pad_token_id
    return Engine(
        forward,
        mask_id=ckpt.mask_id,
        pad_id=ckpt.mask_id if pad is None else int(pad),
        device=ckpt.device,
        max_batch=MAX_BATCH,
        typical_length=ckpt.config.seq_len,
        end_ids=sorted(end_token_ids(ckpt.tokenizer)),
    )


def mixed_workload(ckpt) -> list[GenerationSpec]:
    """Lengths in every width bucket, each remasking rule, prompts and not, streaming and not."""
    words = ckpt.tokenizer.encode("once upon a time a cat", add_special_tokens=False)
    specs = []
    for i, length in enumerate((8, 64, 65, 100, 129, 192, 40, 150, 12, 70)):
        settings = SamplerSettings(steps=3, remasking=list(Remasking)[i % len(Remasking)], temperature=0.8)
        prefix = tuple(words[: i % 4])
        specs.append(GenerationSpec(prefix, length, settings, seed=i, stream_every=1 if i % 2 else None))
    return specs


def test_nothing_compiles_after_warm_up_and_every_pass_hits_a_prepared_shape(ckpt, monkeypatch):
    engine = traced_engine(ckpt)
    static = engine._forward._static
    seen: list[tuple[int, int]] = []
    encoded = static._encoded
    monkeypatch.setattr(static, "_encoded", lambda x, mask: seen.append(tuple(x.shape)) or encoded(x, mask))
    torch._dynamo.reset()
    counters.clear()
    engine.start()
    try:
        engine.warm_up()
        graphs, warmed, prepared = counters["stats"]["unique_graphs"], len(seen), sorted(static.prepared)
        specs = mixed_workload(ckpt)
        for wave in (specs[:1], specs[1:4], specs[4:]):  # one row, then a few, then more than max_batch
            collectors = [Collector() for _ in wave]
            for spec, collector in zip(wave, collectors, strict=True):
                engine.submit(spec, collector, timeout_s=120)
            assert all(isinstance(collector.outcome(timeout=120), Finished) for collector in collectors)
    finally:
        engine.stop()
    after = seen[warmed:]
    assert counters["stats"]["unique_graphs"] == graphs, "dynamo compiled a graph after the warm-up"
    assert set(after) <= set(prepared) and static.late_shapes == []
    assert len(set(after)) >= 4, f"the workload should meet several shapes, met {sorted(set(after))}"
    assert prepared == sorted(static.plan.shapes) and graphs >= len(static.plan) == 9
    assert engine.forward_name == "compiled" and engine.forward_shapes == (static.plan.shapes, {})


BROKEN = (4, 64)  # the tiny checkpoint's plan at max_batch 4: (4, 64), (2, 64), (1, 64)
HELD = (2, 64)


class OneShapeFails(StaticShapeForward):
    """The compiled path on dynamo's "eager" backend, where preparing BROKEN fails and preparing HELD
    waits for `release`, so that a test can read /ready in the middle of the warm-up."""

    release = threading.Event()

    def __init__(self, model, pad_id, plan, capture, backend="inductor") -> None:
        super().__init__(model, pad_id, plan, capture, "eager")
        runner_for = self._runner_for

        def failing(x: torch.Tensor, mask: torch.Tensor):
            if tuple(x.shape) == BROKEN:
                raise RuntimeError("capture failed: no graph memory left")
            if tuple(x.shape) == HELD:
                assert self.release.wait(30)
            return runner_for(x, mask)

        self._runner_for = failing


@pytest.mark.anyio
async def test_ready_waits_for_every_shape_and_a_failed_one_runs_eagerly(tiny_checkpoint_dir, monkeypatch, caplog):
    monkeypatch.setattr(model_forward, "StaticShapeForward", OneShapeFails)
    caplog.set_level(logging.INFO, logger="app.engine")
    app = create_app(settings_for(tiny_checkpoint_dir, compile=True, max_batch=4))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            for _ in range(500):
                ready = await client.get("/ready")
                if ready.json()["detail"] == "warming up: 1/3 shapes":
                    break
                await asyncio.sleep(0.02)
            assert ready.status_code == 503 and ready.json() == {
                "status": "loading",
                "detail": "warming up: 1/3 shapes",
            }
            assert (await client.post("/generate", json={})).status_code == 503
            OneShapeFails.release.set()
            await wait_ready(client)
            answers = await asyncio.gather(
                *(client.post("/generate", json={"length": 40, "steps": 4, "seed": s}) for s in range(6))
            )
            assert [a.status_code for a in answers] == [200] * 6
            info = (await client.get("/info")).json()
    assert info["forward"] == "compiled; 1 of 3 shapes eager" and info["warm_up_s"] > 0
    assert info["compiled_shapes"] == ["2x64", "1x64"]
    assert info["eager_shapes"] == {"4x64": "RuntimeError: capture failed: no graph memory left"}
    failures = [r for r in caplog.records if "4 x 64 failed" in r.getMessage()]
    assert len(failures) == 1, "logged once, however many steps ran at that shape"
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiling ")]
    assert progress == [f"compiling {i}/3 (rows {r}, width 64) ..." for i, r in ((1, 4), (2, 2), (3, 1))]
