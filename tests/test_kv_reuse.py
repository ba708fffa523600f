"""Key/value reuse (`--kv-refresh`): exact at a full pass every forward, a stated tolerance of the
probabilities between full passes, fewer positions run, and a new batch never reads another's keys."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.kv_reuse import ReusingForward
from app.diffusion.logits import logits_at
from app.generate_cli import add_generate_arguments, run_generate

REUSE_TOLERANCE = {"refresh": 4, "mean": 0.02}
"""How far the reusing forward's distribution at a queried position may be from the exact forward's
(total variation distance, averaged over a story's queried positions), for a full pass every 4 forwards;
measured on the shipped model: 0.011 (refresh 8: 0.020)."""


EXACT = {"rtol": 0.0, "atol": 1e-6}
"""The exact forward's logits: the tiny model's random weights move them by about 1e-5 when keys and
values are stale, and a full pass gives eager's to the bit."""


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


def half_masked(ckpt, rows: int = 2, length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Random words with their second half masked, and the masked positions as the query."""
    x = torch.randint(1000, 2000, (rows, length), generator=torch.Generator().manual_seed(0))
    x[:, length // 2 :] = ckpt.mask_id
    return x, x == ckpt.mask_id


def test_a_full_pass_every_forward_is_the_exact_forward(ckpt):
    x, query = half_masked(ckpt)
    reuse = ReusingForward(ckpt.model, ckpt.mask_id, refresh=1)
    for _ in range(3):
        torch.testing.assert_close(reuse(x, query), logits_at(ckpt.model, x, query), **EXACT)
    assert reuse.positions_run == reuse.positions_seen


def test_between_full_passes_only_queried_and_changed_positions_run(ckpt):
    x, query = half_masked(ckpt)
    reuse = ReusingForward(ckpt.model, ckpt.mask_id, refresh=8)
    exact = reuse(x, query)
    assert reuse.positions_run == x.numel()
    # Nothing changed since the full pass: the kept keys and values are the exact ones.
    torch.testing.assert_close(reuse(x, query), exact, **EXACT)
    fewer = query.clone()
    fewer[:, 30:] = False
    reuse(x, fewer)
    assert reuse.positions_run == x.numel() + 2 * 20 + 2 * 10  # full pass, 20 queried, 10 queried, per row


def test_a_changed_token_is_seen_at_once(ckpt):
    """The token written at position 20 changes what its neighbours are predicted to be on the next call,
    before any full pass: its keys and values are computed with it in place."""
    x, query = half_masked(ckpt)
    written = x.clone()
    written[:, 20] = 1500
    query[:, 20] = False

    def next_call(after: torch.Tensor) -> torch.Tensor:
        reuse = ReusingForward(ckpt.model, ckpt.mask_id, refresh=8)
        reuse(x, query)
        return reuse(after, query)

    assert not torch.allclose(next_call(written), next_call(x))


def test_a_new_batch_starts_with_a_full_pass(ckpt):
    """A forward kept for one story and given another (more masks than its last call) reads none of the
    first story's keys and values: its logits are the exact forward's, at positions that did not change
    too."""
    x, query = half_masked(ckpt)
    reuse = ReusingForward(ckpt.model, ckpt.mask_id, refresh=100)
    reuse(x, query)
    other = x.clone()
    other[:, 10:20] = ckpt.mask_id  # positions 0-9 are as they were, their context is not
    late = torch.zeros_like(query)
    late[:, 30:] = True
    torch.testing.assert_close(reuse(other, late), logits_at(ckpt.model, other, late), **EXACT)


def test_reuse_writes_eagers_stories_at_refresh_1_and_runs_fewer_positions_above(ckpt):
    settings = ckpt.config.sampler_settings

    def stories(forward=None) -> torch.Tensor:
        *_, (_, last) = sample(ckpt.model, ckpt.tokenizer, settings, [3, 4], ckpt.config.seq_len, forward=forward)
        return last.x

    eager = stories()
    assert torch.equal(stories(ReusingForward(ckpt.model, ckpt.mask_id, refresh=1)), eager)
    reuse = ReusingForward(ckpt.model, ckpt.mask_id, refresh=4)
    stories(reuse)
    assert reuse.positions_run < reuse.positions_seen / 2


def test_the_shipped_model_stays_within_the_stated_tolerance():
    shipped = load_checkpoint(DEFAULT_MODEL_DIR, device="cpu", dtype="float32")
    reuse = ReusingForward(shipped.model, shipped.mask_id, REUSE_TOLERANCE["refresh"])
    distances = []

    def compared(x, query, attention_mask=None):
        reused = reuse(x, query)
        exact = logits_at(shipped.model, x, query)
        distances.append(0.5 * (reused.softmax(-1) - exact.softmax(-1)).abs().sum(-1))
        return reused

    compared.name = "compared"
    for _ in sample(shipped.model, shipped.tokenizer, shipped.config.sampler_settings, [0], 256, forward=compared):
        pass
    assert reuse.positions_run < reuse.positions_seen / 2
    assert 0 < torch.cat(distances).mean() <= REUSE_TOLERANCE["mean"]  # approximate, within the bound


def test_what_it_cannot_serve_is_refused(ckpt):
    x, query = half_masked(ckpt)
    with pytest.raises(ValueError, match="refresh must be at least 1"):
        ReusingForward(ckpt.model, ckpt.mask_id, refresh=0)
    with pytest.raises(ValueError, match="unpadded"):
        ReusingForward(ckpt.model, ckpt.mask_id, refresh=2)(x, query, torch.ones_like(x))
    bert = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="distilbert models, not bert"):
        ReusingForward(bert, 3, refresh=2)


def generate(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    return parser.parse_args(argv)


def test_generate_kv_refresh_runs_the_reusing_forward(tiny_checkpoint_dir, capsys, monkeypatch):
    """`storydiff generate --kv-refresh K` writes its story with reuse (K = 1: the exact story)."""
    refreshes: list[int] = []
    original = ReusingForward.__call__

    def counted(self, *args, **kwargs):
        refreshes.append(self.refresh)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReusingForward, "__call__", counted)
    common = ["--model", str(tiny_checkpoint_dir), "--seed", "5", "--json", "--cpu-backend", "eager"]
    answers = []
    for extra in ([], ["--kv-refresh", "1"], ["--kv-refresh", "4"]):
        assert run_generate(generate([*common, *extra])) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[1]["tokens"] == answers[0]["tokens"]
    forwards = [answer["forwards"] for answer in answers]
    assert refreshes == [1] * forwards[1] + [4] * forwards[2]  # the plain run made no reusing call


def test_generate_refuses_a_bad_kv_refresh(capsys):
    with pytest.raises(SystemExit):
        generate(["--kv-refresh", "-1"])
    assert "is not a number of forwards" in capsys.readouterr().err
