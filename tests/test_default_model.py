"""The shipped default model: present, packaged, and as good as when it was trained.

A broken export (wrong dtype, a tokenizer that no longer matches the weights, a lost
diffusion_config) shows up here as a bound far above the one recorded at training time.
"""

from __future__ import annotations

import pytest

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.sampler_settings import SamplerOverrides
from app.diffusion.text import decode_story, story_end
from model_training.evaluation import text_bound
from tests.conftest import STORIES_DIR, free_port, running_server

# Recorded from the shipped model on tests/data/tinystories/valid.txt (validation-split stories it
# never trained on), 4 t-samples, seed 0; the gate leaves 5% for platform noise.
RECORDED_BITS_PER_CHAR = 0.878
GATE = 1.05


@pytest.fixture(scope="module")
def default_ckpt():
    return load_checkpoint(DEFAULT_MODEL_DIR, device="cpu")


def held_out_stories() -> list[str]:
    text = (STORIES_DIR / "valid.txt").read_text()
    return [story.strip() for story in text.split("<|endoftext|>") if story.strip()]


def test_default_model_is_small_and_self_describing(default_ckpt):
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < 40 * 2**20
    assert (DEFAULT_MODEL_DIR / "README.md").is_file()
    assert default_ckpt.config.seq_len == 256
    assert default_ckpt.config.training.get("val_bits_per_char")


def test_held_out_bound_stays_below_the_recorded_one(default_ckpt):
    result = text_bound(
        default_ckpt.model,
        default_ckpt.tokenizer,
        held_out_stories(),
        default_ckpt.config.seq_len,
        num_t_samples=4,
        seed=0,
    )
    assert result.bits_per_char < RECORDED_BITS_PER_CHAR * GATE, result


@pytest.mark.parametrize(
    ("temperature", "remasking"),
    [(0.0, None), (None, None), (None, "low_confidence")],
    ids=["greedy", "default-sampling", "low-confidence-in-blocks"],
)
def test_generated_stories_end_before_the_last_position(default_ckpt, temperature, remasking):
    ckpt = default_ckpt
    given = {"steps": 64, "temperature": temperature, "remasking": remasking}
    cfg = ckpt.config.sampler_settings.override(
        SamplerOverrides.model_validate({k: v for k, v in given.items() if v is not None})
    )
    length = ckpt.config.seq_len
    *_, (_, last) = sample(ckpt.model, ckpt.tokenizer, cfg, seeds=[0, 1, 2, 3], length=length)  # four stories
    x = last.x
    ends = [story_end(row.tolist(), ckpt.tokenizer) for row in x]
    assert sum(end < length for end in ends) >= 3, ends
    assert all(len(decode_story(row.tolist(), ckpt.tokenizer).split()) >= 10 for row in x)


def test_the_server_and_sample_write_the_same_story_at_the_shipped_defaults(default_ckpt):
    """What `POST /generate` writes at the checkpoint's defaults (its endings rule included) is what
    `sample` writes for the CLI, the training samples and the benchmarks, for the same seed: one default."""
    import httpx

    from app.config import Settings

    defaults = default_ckpt.config.sampler_settings
    steps = 32  # the defaults but fewer steps, to keep the test short
    with running_server(Settings(device="cpu", port=free_port())) as (url, _):
        answers = [httpx.post(f"{url}/generate", json={"seed": s, "steps": steps}, timeout=120).json() for s in (3, 4)]
    cfg = defaults.model_copy(update={"steps": steps})
    *_, (_, last) = sample(default_ckpt.model, default_ckpt.tokenizer, cfg, seeds=[3, 4], length=256)
    assert [answer["text"] for answer in answers] == [
        decode_story(row.tolist(), default_ckpt.tokenizer) for row in last.x
    ]
    assert defaults.endings.value == "length_first"  # the rule this compares is the one the server ships
