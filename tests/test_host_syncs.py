"""The engine's step is sync-free: one device-to-host copy per `RunningBatch.advance`, whatever the rows use.

On the CPU nothing waits, so the counter (tests/support/host_syncs.py) counts the ops that would make
the host wait on a GPU; these tests bound them over the sampler grid (tests/support/sync_workloads.py).
"""

from __future__ import annotations

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.text import end_token_ids
from app.engine.batch import RunningBatch
from app.engine.forward_plan import ONE_PASS, ForwardCost
from app.engine.model_forward import CheckpointForward
from app.engine.shape_plan import ShapePlan
from app.engine.static_forward import StaticShapeForward
from tests.support.host_syncs import count_host_syncs
from tests.support.sync_workloads import Config, canvas_rows, grid, syncs_per_advance

CONFIGS = list(grid(steps=4))


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


@pytest.fixture(scope="module")
def words(ckpt):
    return list(ckpt.tokenizer("Once upon a time there was a little cat")["input_ids"])[1:-1]


def new_batch(ckpt) -> RunningBatch:
    return RunningBatch(ckpt.mask_id, ckpt.tokenizer.pad_token_id, torch.device("cpu"), end_token_ids(ckpt.tokenizer))


def test_the_counter_counts_what_would_block_and_not_host_work():
    x = torch.arange(6)
    with count_host_syncs() as syncs:
        x.nonzero()
        x[x > 2]
        bool((x > 2).any())
        host = x.cpu()  # the planned copy
        host[host > 2].tolist()  # host work on the copy: nothing waits
        torch.nonzero_static(x > 2, size=3)
    assert [op for op, _ in syncs.events] == ["nonzero", "index", "__bool__", "cpu"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: " ".join(c.label.split()))
def test_one_host_copy_per_advance(ckpt, words, config: Config):
    events = syncs_per_advance(
        CheckpointForward(ckpt, cpu_backend="eager"),
        config,
        words,
        ckpt.mask_id,
        ckpt.tokenizer.pad_token_id,
        end_token_ids(ckpt.tokenizer),
    )
    assert [[op for op, _ in iteration] for iteration in events] == [["cpu"]] * config.settings.steps, events


@pytest.mark.parametrize("cost", [ONE_PASS, ForwardCost(per_pass_s=0.0, per_position_s=1.0)], ids=["one pass", "split"])
def test_one_host_copy_per_advance_in_a_batch_of_everything(ckpt, words, cost):
    """Rows of many grid configs and of every token choice (greedy, plain, top-k), a third of them
    revising, share one batch, rows join between iterations and finished ones leave, the forward runs
    as one pass or one per length: still one copy per iteration."""
    forward = CheckpointForward(ckpt, cpu_backend="eager")  # the PyTorch path a GPU runs; ONNX Runtime reads numpy
    choices = [{"temperature": 0.0}, {"temperature": 1.0, "revision": 0.3}, {"temperature": 0.7, "top_k": 5}]
    batch = new_batch(ckpt)
    batch.cost = cost
    configs = [
        Config(config.settings.model_copy(update=choices[i % 3]), config.canvas)
        for i, config in enumerate(CONFIGS[:: len(CONFIGS) // 24 or 1][:24])
    ]
    joining = [row for i, config in enumerate(configs) for row in canvas_rows(config, words, [20 + i])]
    events = []
    while joining or len(batch):
        batch.add(joining[:40])  # planned on the host: no device op
        joining = joining[40:]
        with count_host_syncs() as syncs:
            batch.advance(forward)
            batch.keep([done < s.steps for done, s in zip(batch.steps_done, batch.settings, strict=True)])
        events.append(syncs.events)
    assert all([op for op, _ in iteration] == ["cpu"] for iteration in events), events


def test_the_static_forward_needs_no_host_sync(ckpt):
    """The bucketed forward (eager here; compiled on a GPU) with padding and flat queried positions."""
    plan = ShapePlan.of(4, ckpt.max_positions)
    forward = StaticShapeForward(ckpt.model, ckpt.tokenizer.pad_token_id, plan, "eager")
    x = torch.full((3, 20), ckpt.mask_id)
    attention_mask = (torch.arange(20)[None, :] < torch.tensor([[20], [12], [7]])).long()
    with count_host_syncs() as syncs:
        logits = forward(x, torch.tensor([0, 21, 45]), attention_mask)
    assert logits.shape[0] == 3 and syncs.events == []
