"""Sampler invariants on a tiny random DistilBERT: what every denoising run must guarantee."""

from __future__ import annotations

import math

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.sampling import (
    SamplerRows,
    choose_tokens,
    denoise,
    initial_tokens,
)
from app.diffusion.text import prompt_ids


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


class CountingLogits:
    """The model's logits at queried positions, counting how often the model runs."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, query):
        self.calls += 1
        return logits_at(self.model, x, query)


class Run(list):
    """The steps of one `denoise` run, with `index` (steps done) on each."""


def run(ckpt, cfg, seed=0, batch=1, length=32, prefix=(), logits_fn=None):
    """Denoise `batch` rows with seeds seed, seed+1, ...; returns ([(index, step)], model calls)."""
    x = initial_tokens(list(prefix), length, ckpt.mask_id).repeat(batch, 1)
    rows = SamplerRows.build([cfg] * batch, [seed + i for i in range(batch)])
    logits_fn = logits_fn or CountingLogits(ckpt.model)
    steps = [(int(index[0]), step) for index, step in denoise(logits_fn, x, rows, ckpt.mask_id)]
    return steps, getattr(logits_fn, "calls", None)


def choose(logits, temperature=0.0, top_k=0, top_p=1.0, mask_id=3, seed=0):
    """`choose_tokens` with one setting for every row and uniforms from `seed`."""
    n = logits.shape[0]
    u = uniform(torch.tensor(seed), torch.tensor(0), torch.arange(n), Purpose.TOKEN)
    full = lambda value, dtype: torch.full((n,), value, dtype=dtype)  # noqa: E731
    return choose_tokens(
        logits, full(temperature, torch.float64), full(top_k, torch.long), full(top_p, torch.float64), u, mask_id
    )


def reference_argmax_loop(model, x, num_steps, mask_id, seeds):
    """The reference demo (Algorithm 4, argmax): full forward every step, remask with prob s/t."""
    positions = torch.arange(x.shape[1])
    for i in range(num_steps):
        t, s = 1 - i / num_steps, 1 - (i + 1) / num_steps
        mask = x == mask_id
        with torch.no_grad():
            logits = model(input_ids=x).logits
        logits[..., mask_id] = -math.inf
        x0 = torch.where(mask, logits.argmax(-1), x)
        remask = uniform(seeds[:, None], torch.tensor(i), positions, Purpose.REMASK) < s / t
        x = torch.where(mask & remask, torch.full_like(x, mask_id), x0)
    return x


ALL_SETTINGS = [
    SamplerSettings(steps=16, remasking=Remasking.RANDOM, temperature=0.0),
    SamplerSettings(steps=16, remasking=Remasking.RANDOM, temperature=1.0, top_k=50),
    SamplerSettings(steps=16, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0),
    SamplerSettings(steps=16, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, top_p=0.9),
    SamplerSettings(steps=50, remasking=Remasking.LOW_CONFIDENCE, temperature=1.0),  # T > L
    SamplerSettings(steps=16, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, block_length=8),
    SamplerSettings(steps=12, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0, block_length=5),  # uneven
]


@pytest.mark.parametrize("cfg", ALL_SETTINGS, ids=str)
def test_no_mask_left_and_every_step_yielded(ckpt, cfg):
    steps, _ = run(ckpt, cfg, batch=2)
    assert [index for index, _ in steps] == list(range(1, cfg.steps + 1))
    assert not (steps[-1][1].x == ckpt.mask_id).any()


@pytest.mark.parametrize("cfg", ALL_SETTINGS, ids=str)
def test_prompt_tokens_never_change(ckpt, cfg, cased_tokenizer):
    prefix = prompt_ids(cased_tokenizer, "Once upon a time, a cat")
    steps, _ = run(ckpt, cfg, prefix=prefix)
    for _, step in steps:
        assert step.x[0, : len(prefix)].tolist() == prefix
        assert (step.positions >= len(prefix)).all()


@pytest.mark.parametrize("cfg", ALL_SETTINGS, ids=str)
def test_revealed_tokens_never_change_and_deltas_add_up(ckpt, cfg):
    steps, _ = run(ckpt, cfg)
    x = initial_tokens([], 32, ckpt.mask_id).unsqueeze(0)
    for _, step in steps:
        was_revealed = x != ckpt.mask_id
        assert torch.equal(step.x[was_revealed], x[was_revealed])
        replay = x.clone()
        replay[step.rows, step.positions] = step.token_ids
        assert torch.equal(replay, step.x), "the step's delta must describe the change exactly"
        assert ((step.probs > 0) & (step.probs <= 1)).all()
        x = step.x


def test_low_confidence_reveals_exactly_k_per_step(ckpt):
    cfg = SamplerSettings(steps=10, remasking=Remasking.LOW_CONFIDENCE)
    steps, _ = run(ckpt, cfg, length=32)
    masked = 32
    for index, step in steps:
        remaining = cfg.steps - (index - 1)
        expected = masked - masked * (remaining - 1) // remaining
        assert step.positions.numel() == expected
        masked -= expected
    assert masked == 0


def test_low_confidence_keeps_the_most_confident(ckpt):
    cfg = SamplerSettings(steps=4, remasking=Remasking.LOW_CONFIDENCE)
    (_, first), *_ = run(ckpt, cfg, length=32)[0]
    x = initial_tokens([], 32, ckpt.mask_id).unsqueeze(0)
    _, probs = choose(logits_at(ckpt.model, x, torch.ones_like(x, dtype=torch.bool)), mask_id=ckpt.mask_id)
    assert sorted(first.positions.tolist()) == sorted(probs.topk(8).indices.tolist())


@pytest.mark.parametrize("block_length", [1, 5, 8, 64])
def test_blocks_are_revealed_left_to_right_at_the_same_pace(ckpt, block_length):
    """Semi-autoregressive low_confidence: a block is revealed only once every earlier one is whole,
    and each step still reveals the schedule's k (blocks change where, not how many)."""
    cfg = SamplerSettings(steps=10, remasking=Remasking.LOW_CONFIDENCE, temperature=1.0, block_length=block_length)
    unblocked = SamplerSettings(steps=10, remasking=Remasking.LOW_CONFIDENCE, temperature=1.0)
    steps, _ = run(ckpt, cfg, batch=2, length=32, prefix=[7, 8, 9])
    plain, _ = run(ckpt, unblocked, batch=2, length=32, prefix=[7, 8, 9])
    for (index, step), (_, plain_step) in zip(steps, plain, strict=True):
        assert step.positions.numel() == plain_step.positions.numel()
        for row in range(2):
            masked = (step.x[row] == ckpt.mask_id).nonzero().flatten()
            revealed = step.x[row, 3:] != ckpt.mask_id
            if masked.numel() and revealed.any():
                last_revealed = 3 + int(revealed.nonzero().max())
                assert last_revealed // block_length <= int(masked.min()) // block_length, (index, row)


def test_blocks_keep_a_confident_tail_from_ending_the_story_at_once():
    """A model sure of PAD at the end (as a trained one is) fills the tail first without blocks."""
    pad, mask_id, vocab, length = 0, 1, 6, 24

    def pad_loving_logits(x, query):  # PAD likelier the further right; a word (id 5) at the start
        _, positions = query.nonzero(as_tuple=True)
        logits = torch.zeros(positions.numel(), vocab)
        logits[:, pad] = positions.float() / length * 8
        logits[:, 5] = 3.0
        return logits

    def first_step(block_length):
        cfg = SamplerSettings(steps=8, remasking=Remasking.LOW_CONFIDENCE, block_length=block_length)
        x = torch.full((1, length), mask_id)
        return next(denoise(pad_loving_logits, x, SamplerRows.build([cfg], [0]), mask_id))[1]

    plain, blocked = first_step(None), first_step(6)
    assert (plain.token_ids == pad).all() and plain.positions.min() >= length - 6
    assert sorted(blocked.positions.tolist()) == [0, 1, 2], "the first block, left to right"
    assert (blocked.token_ids == 5).all()


def test_random_remasking_ignores_block_length(ckpt):
    cfg = SamplerSettings(steps=8, remasking=Remasking.RANDOM, temperature=1.0)
    with_blocks = SamplerSettings(steps=8, remasking=Remasking.RANDOM, temperature=1.0, block_length=4)
    assert torch.equal(run(ckpt, cfg, seed=3)[0][-1][1].x, run(ckpt, with_blocks, seed=3)[0][-1][1].x)


@pytest.mark.parametrize("cfg", ALL_SETTINGS, ids=str)
def test_same_seed_same_story(ckpt, cfg):
    a, _ = run(ckpt, cfg, seed=7)
    b, _ = run(ckpt, cfg, seed=7)
    assert torch.equal(a[-1][1].x, b[-1][1].x)


@pytest.mark.parametrize("cfg", [c for c in ALL_SETTINGS if c.temperature > 0], ids=str)
def test_different_seeds_differ_when_sampling(ckpt, cfg):
    a, _ = run(ckpt, cfg, seed=1)
    b, _ = run(ckpt, cfg, seed=2)
    assert not torch.equal(a[-1][1].x, b[-1][1].x)


def test_argmax_random_remasking_matches_reference_loop(ckpt):
    for seed in range(3):
        cfg = SamplerSettings(steps=32, remasking=Remasking.RANDOM, temperature=0.0)
        steps, _ = run(ckpt, cfg, seed=seed, batch=2)
        x = initial_tokens([], 32, ckpt.mask_id).repeat(2, 1)
        reference = reference_argmax_loop(ckpt.model, x, 32, ckpt.mask_id, torch.tensor([seed, seed + 1]))
        assert torch.equal(steps[-1][1].x, reference)


def test_steps_that_reveal_nothing_skip_the_model(ckpt):
    cfg = SamplerSettings(steps=32, remasking=Remasking.RANDOM)
    steps, calls = run(ckpt, cfg, seed=3)
    revealing = sum(1 for _, s in steps if s.positions.numel() > 0)
    assert calls == revealing < cfg.steps
    assert all(s.model_called == (s.positions.numel() > 0) for _, s in steps)


def test_low_confidence_skips_steps_with_nothing_to_reveal(ckpt):
    cfg = SamplerSettings(steps=64, remasking=Remasking.LOW_CONFIDENCE)  # twice as many steps as tokens
    _steps, calls = run(ckpt, cfg, length=32)
    assert calls == 32


def test_mask_token_is_never_chosen():
    logits = torch.zeros(4, 10)
    logits[:, 3] = 100.0
    for temperature in (0.0, 1.0):
        ids, _probs = choose(logits, temperature=temperature)
        assert (ids != 3).all()


def test_top_k_and_top_p_restrict_the_draw():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]])).repeat(4000, 1)  # id 4: the mask
    seen = lambda **kw: set(choose(logits, temperature=1.0, mask_id=4, **kw)[0].tolist())  # noqa: E731
    assert seen(top_k=2) == {0, 1}
    assert seen(top_p=0.7) == {0, 1}
    assert seen(top_p=0.5) == {0}
    assert seen() == {0, 1, 2, 3}


@pytest.mark.parametrize(("temperature", "top_p"), [(5e-324, None), (1.0, 1e-46), (1e-300, 1e-300)])
def test_vanishing_temperature_or_nucleus_still_picks_the_likeliest_token(temperature, top_p):
    """Limits that underflow (top_p 1e-46 is 0 in float32) or overflow (x / 5e-324) act as argmax."""
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.6, 0.1]])).repeat(64, 1)
    ids, probs = choose(logits, temperature=temperature, top_p=top_p or 1.0, mask_id=0)
    assert (ids == 2).all() and torch.allclose(probs, torch.tensor(0.6 / 0.9, dtype=probs.dtype))


def test_temperature_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0, 0.0])
    logits = torch.log(probs.clamp_min(1e-12)).repeat(20_000, 1)
    ids, _ = choose(logits, temperature=1.0, mask_id=4)
    freq = torch.bincount(ids, minlength=5).float() / ids.numel()
    assert torch.allclose(freq, probs, atol=0.02)


def test_temperature_sharpens_and_flattens():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1, 1e-9])).repeat(20_000, 1)
    top_share = {t: float((choose(logits, temperature=t, mask_id=3)[0] == 0).float().mean()) for t in (0.5, 2.0)}
    assert top_share[0.5] > 0.75 > 0.6 > top_share[2.0] > 0.4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"steps": 4, "temperature": -1},
        {"steps": 4, "top_p": 0.0},
        {"steps": 4, "top_k": 0},
        {"steps": 4, "remasking": "sideways"},
        {"steps": 4, "block_length": 0},
        {"steps": 4, "temperature": math.inf},
    ],
)
def test_bad_sampler_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplerSettings(**kwargs)


def test_logits_at_matches_full_forward(ckpt):
    x = torch.randint(0, 1000, (2, 20))
    query = torch.rand(2, 20) < 0.5
    full = ckpt.model(input_ids=x).logits[query]
    assert torch.allclose(logits_at(ckpt.model, x, query), full, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_logits_at_runs_the_head_only_at_queried_positions(family: str) -> None:
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.for_model(
        family,
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
    )
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).eval()
    rows: list[int] = []
    decoder = model.cls.predictions.decoder if family == "bert" else model.lm_head.decoder
    decoder.register_forward_hook(lambda _m, _a, out: rows.append(out[..., 0].numel()))
    x = torch.randint(5, 60, (2, 20))
    query = torch.rand(2, 20, generator=torch.Generator().manual_seed(0)) < 0.5
    full = model(input_ids=x).logits[query]
    assert torch.allclose(logits_at(model, x, query), full, atol=1e-5)
    assert rows == [40, int(query.sum())]
