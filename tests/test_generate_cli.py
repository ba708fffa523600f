"""`storydiff generate`: the terminal demo end to end, and its live view."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.cli import main
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.text import MASK_PLACEHOLDER
from app.flags import flag_name
from app.terminal_view import sequence_text


def generate(*args: str, terminal: bool = False) -> subprocess.CompletedProcess:
    """`storydiff generate ARGS`, its stdout a pipe, or a terminal as far as rich can tell (TTY_COMPATIBLE)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | ({"TTY_COMPATIBLE": "1", "TERM": "dumb"} if terminal else {}),  # dumb: no colour codes
    )


def test_json_output_is_reproducible_across_processes(tiny_checkpoint_dir, capsys):
    args = ("--model", str(tiny_checkpoint_dir), "--steps", "12", "--temperature", "1", "--seed", "5", "--json")
    first = generate(*args)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["seed"] == 5 and result["steps"] == 12 and result["length"] == 48
    assert main(["generate", *args]) == 0
    assert result["text"] == json.loads(capsys.readouterr().out)["text"]


def test_live_run_ends_with_the_story(tiny_checkpoint_dir):
    args = ("--model", str(tiny_checkpoint_dir), "--steps", "8", "--seed", "1", "--prompt", "Once upon a time")
    done = generate(*args, terminal=True)
    assert done.returncode == 0, done.stderr
    assert "step 8/8" in done.stdout
    assert "Once upon a time" in done.stdout
    assert "seed 1" in done.stdout


def test_a_pipe_gets_the_story_as_plain_text(tiny_checkpoint_dir):
    args = ("--model", str(tiny_checkpoint_dir), "--steps", "8", "--seed", "1", "--prompt", "Once upon a time")
    piped = generate(*args)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("Once upon a time") and len(piped.stdout.splitlines()) == 1
    assert not any(ch in piped.stdout for ch in "╭│╰━") and "\x1b[" not in piped.stdout  # no panel, no colour
    assert "seed 1 · 8 steps" in piped.stderr


def test_no_live_prints_only_the_story_and_the_seed_to_stderr(tiny_checkpoint_dir, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_checkpoint_dir),
        "--steps",
        "8",
        "--no-live",
        "--prompt",
        "Once upon a time",
    ]
    assert main(args) == 0
    done = capsys.readouterr()
    assert done.out.startswith("Once upon a time") and "step" not in done.out
    seed = done.err.split("seed ")[1].split()[0]  # chosen at random: the one way to replay the story
    assert main([*args, "--seed", seed]) == 0
    assert capsys.readouterr().out == done.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/dir"], "does not exist"),
        (["--steps", "0"], "--steps: Input should be greater than or equal to 1"),
        (["--length", "1000"], "above the model's 64 positions"),
        (["--block-length", "0"], "--block-length: Input should be greater than or equal to 1"),
        (["--top-p", "1.5"], "--top-p: Input should be less than or equal to 1"),
        (["--temperature", "nan"], "--temperature: Input should be a finite number"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_checkpoint_dir, args, message, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint_dir), "--no-live", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("loading model")]
    assert message in err and len(errors) == 1


def test_sampler_flags_override_the_checkpoint_and_none_turns_off(copy_of, tiny_checkpoint_dir, capsys):
    model = copy_of(tiny_checkpoint_dir)
    config = json.loads((model / "diffusion_config.json").read_text())
    config["sampler"] = {"remasking": "low_confidence", "block_length": 8, "top_k": 50}
    (model / "diffusion_config.json").write_text(json.dumps(config))

    def run(*flags: str) -> dict:
        args = ["generate", "--model", str(model), "--steps", "8", "--temperature", "1", "--seed", "3", "--json"]
        assert main([*args, *flags]) == 0
        return json.loads(capsys.readouterr().out)

    recommended, blocked, plain = run(), run("--block-length", "4"), run("--block-length", "none", "--top-k", "null")
    assert (recommended["block_length"], recommended["top_k"], recommended["remasking"]) == (8, 50, "low_confidence")
    assert blocked["block_length"] == 4 and blocked["top_k"] == 50
    assert plain["block_length"] is None and plain["top_k"] is None
    assert blocked["text"] != plain["text"]


def test_help_lists_every_sampler_setting_once_without_noise(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # unwrapped (argparse breaks at hyphens)
    for name, info in SamplerSettings.model_fields.items():
        assert flag_name(name) in text and " ".join(str(info.description).split()).replace("- ", "-") in text
    assert text.count("diffusion_config.json") == 1 and "default: None" not in text


def test_sequence_view_marks_masks_and_fresh_tokens(cased_tokenizer):
    tok = cased_tokenizer
    ids = tok("Tom had a red ball.", add_special_tokens=False)["input_ids"]
    ids[2] = tok.mask_token_id
    text = sequence_text(ids, tok, fresh={3: 0.9})
    assert MASK_PLACEHOLDER in text.plain and text.plain.strip().startswith("Tom had")
    styles = {text.plain[span.start : span.end]: str(span.style) for span in text.spans}
    assert "green" in styles["red"]
    assert styles[MASK_PLACEHOLDER] == "grey42"
