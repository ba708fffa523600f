"""`storydiff generate`: the terminal demo end to end, and its live view."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.cli import main
from app.diffusion.text import MASK_PLACEHOLDER
from app.terminal_view import sequence_text


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_output_is_reproducible(tiny_checkpoint_dir):
    args = ("--model", str(tiny_checkpoint_dir), "--steps", "12", "--temperature", "1", "--seed", "5", "--json")
    first, second = generate(*args), generate(*args)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["seed"] == 5 and result["steps"] == 12 and result["length"] == 48
    assert result["text"] == json.loads(second.stdout)["text"]


def test_live_run_ends_with_the_story(tiny_checkpoint_dir):
    done = generate("--model", str(tiny_checkpoint_dir), "--steps", "8", "--seed", "1", "--prompt", "Once upon a time")
    assert done.returncode == 0, done.stderr
    assert "step 8/8" in done.stdout
    assert "Once upon a time" in done.stdout
    assert "seed 1" in done.stdout


def test_no_live_prints_only_the_story(tiny_checkpoint_dir):
    done = generate(
        "--model", str(tiny_checkpoint_dir), "--steps", "8", "--seed", "1", "--no-live", "--prompt", "Once upon a time"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Once upon a time") and "step" not in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/dir"], "does not exist"),
        (["--steps", "0"], "num_steps must be at least 1"),
        (["--length", "1000"], "above the model's 64 positions"),
        (["--block-length", "-1"], "block_length must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_checkpoint_dir, args, message, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint_dir), "--no-live", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_block_length_flag_reaches_the_sampler(tiny_checkpoint_dir, capsys):
    def run(block_length: str) -> dict:
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(tiny_checkpoint_dir),
                    "--remasking",
                    "low_confidence",
                    "--steps",
                    "8",
                    "--temperature",
                    "1",
                    "--seed",
                    "3",
                    "--block-length",
                    block_length,
                    "--json",
                ]
            )
            == 0
        )
        return json.loads(capsys.readouterr().out)

    blocked, plain = run("4"), run("0")
    assert blocked["block_length"] == 4 and plain["block_length"] is None
    assert blocked["text"] != plain["text"]


def test_sequence_view_marks_masks_and_fresh_tokens(cased_tokenizer):
    tok = cased_tokenizer
    ids = tok("Tom had a red ball.", add_special_tokens=False)["input_ids"]
    ids[2] = tok.mask_token_id
    text = sequence_text(ids, tok, fresh={3: 0.9})
    assert MASK_PLACEHOLDER in text.plain and text.plain.strip().startswith("Tom had")
    styles = {text.plain[span.start : span.end]: str(span.style) for span in text.spans}
    assert "green" in styles["red"]
    assert styles[MASK_PLACEHOLDER] == "grey42"
