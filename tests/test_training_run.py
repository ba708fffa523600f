"""End-to-end training on the shipped story sample: learning, the output checkpoint, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.text import decode_story
from model_training import loop
from model_training.checkpoints import complete_states
from model_training.cli import main
from model_training.evaluation import EvalResult
from model_training.loop import train
from tests.conftest import STORIES_DIR, tiny_train_config


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; accelerate's state is a process-wide singleton."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """50 steps of tiny-test.yaml (trained once for the tests that inspect it)."""
    summary = train(tiny_train_config(tmp_path_factory.mktemp("tiny-run")))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return summary


def test_loss_goes_down_and_beats_uniform(tiny_run) -> None:
    losses = [loss for _, loss in tiny_run.loss_history]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.5
    assert tiny_run.result.nats_per_token < torch.log(torch.tensor(256.0)).item() - 0.3  # uniform guess: ln V
    assert tiny_run.progress.step == 50 and tiny_run.progress.tokens_seen == 50 * 8 * 64


def test_output_loads_in_the_core_loader_and_generates(tiny_run) -> None:
    final = tiny_run.final_dir
    assert {"README.md", "config.json", "diffusion_config.json", "tokenizer.json", "model.safetensors"} <= {
        p.name for p in final.iterdir()
    }
    checkpoint = load_checkpoint(final, device="cpu")
    training = checkpoint.config.training
    assert checkpoint.config.seq_len == 64 and training["steps"] == 50
    assert training["tokens_seen"] == 25_600 and training["val_bits_per_char"] > 0 and "hardware" in training
    *_, (_, last) = sample(checkpoint.model, checkpoint.tokenizer, SamplerSettings(steps=8, temperature=1.0), [0], 64)
    x = last.x
    assert not (x == checkpoint.mask_id).any()
    assert isinstance(decode_story(x[0].tolist(), checkpoint.tokenizer), str)
    card = (final / "README.md").read_text()
    assert "50 steps" in card and "nats / position" in card


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    flags = ("--max-steps", "12", "--save-every", "5", "--dropout", "0.1", "--num-samples", "0", "--log-every", "4")
    reference = train(tiny_train_config(tmp_path / "straight", *flags))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    original = loop.Trainer.train_step

    def killed_at_step_7(self, batch, micro):
        if self.progress.step == 7:
            raise KeyboardInterrupt
        return original(self, batch, micro)

    monkeypatch.setattr(loop.Trainer, "train_step", killed_at_step_7)
    # WordPiece training can break frequency ties differently run to run; a resumed run reuses its
    # own saved vocabulary, so give the second run the first one's to compare the weights.
    shutil.copytree(tmp_path / "straight" / "tokenizer", tmp_path / "killed" / "tokenizer")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(tmp_path / "killed", *flags))
    assert [p.name for p in complete_states(tmp_path / "killed")] == ["step-5"]
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    monkeypatch.setattr(loop.Trainer, "train_step", original)
    resumed = train(tiny_train_config(tmp_path / "killed", *flags, "--resume", "auto"))

    assert resumed.progress.step == reference.progress.step == 12
    assert resumed.progress.tokens_seen == reference.progress.tokens_seen
    a = load_file(reference.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert resumed.result.nats_per_token == pytest.approx(reference.result.nats_per_token, rel=1e-5)
    assert [p.name for p in complete_states(tmp_path / "killed")] == ["step-10", "step-12"]  # keep_last 2


def test_best_checkpoint_follows_the_lowest_validation_bound(tmp_path: Path, monkeypatch) -> None:
    bounds = iter([3.0, 2.0, 2.5])  # steps 10, 20 and 30 (the end): the best is step 20's

    def scripted_bound(*args, **kwargs) -> EvalResult:
        return EvalResult(nats_per_token=next(bounds), bits_per_char=1.0, num_stories=16)

    monkeypatch.setattr(loop, "validation_bound", scripted_bound)
    flags = ("--max-steps", "30", "--eval-every", "10", "--num-samples", "0")
    summary = train(tiny_train_config(tmp_path / "run", *flags))

    assert summary.evaluations == [(10, 3.0), (20, 2.0), (30, 2.5)]
    assert (summary.progress.best_step, summary.progress.best_nats) == (20, 2.0)
    best = load_checkpoint(summary.best_dir, device="cpu")
    assert best.config.training["steps"] == 20 and best.config.training["val_nats_per_token"] == 2.0
    assert load_checkpoint(summary.final_dir, device="cpu").config.training["steps"] == 30
    a, b = load_file(summary.best_dir / "model.safetensors"), load_file(summary.final_dir / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # step 20's weights, not the last ones
    state = json.loads((complete_states(tmp_path / "run")[-1] / "trainer_state.json").read_text())
    assert (state["best_step"], state["best_nats"]) == (20, 2.0)  # a resumed run keeps the same best
    assert not list((tmp_path / "run").glob(".tmp-*"))


def _bad_tokenizer_dir(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "once": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    return tmp_path / "tok"


@pytest.mark.parametrize(
    "case",
    ["missing file", "unknown dataset id", "unknown model id", "no mask token", "seq len too long", "missing config"],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(case: str, tmp_path: Path, capsys, tiny_checkpoint_dir) -> None:
    base = [
        "--config",
        "tiny-test",
        "--output",
        str(tmp_path / "out"),
        "--valid",
        str(STORIES_DIR / "valid.txt"),
        "--dataset",
        str(STORIES_DIR / "train.txt"),
    ]
    extra, expected = {
        "missing file": (["--dataset", str(tmp_path / "nope.txt.gz")], "does not exist"),
        "unknown dataset id": (["--dataset", "no-such-org/no-such-stories"], "no-such-org/no-such-stories"),
        "unknown model id": (["--model", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
        "no mask token": (["--tokenizer", str(_bad_tokenizer_dir(tmp_path))], "no mask token"),
        "seq len too long": (
            ["--model", str(tiny_checkpoint_dir), "--seq-len", "128"],
            "above the model's 64 positions",
        ),
        "missing config": (["--config", "no-such-preset"], "not found"),
    }[case]
    assert main(base + extra) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out" / "checkpoints").exists()
