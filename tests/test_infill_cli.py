"""`storydiff generate --ending` and `--template`: stories around fixed text in the terminal."""

from __future__ import annotations

import json

import pytest

from app.cli import main


def generate_json(model_dir, capsys, *flags: str) -> dict:
    assert main(["generate", "--model", str(model_dir), "--json", "--steps", "6", "--seed", "3", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_template_keeps_its_texts_and_fills_its_blanks(tiny_checkpoint_dir, capsys):
    result = generate_json(tiny_checkpoint_dir, capsys, "--template", "Once upon a time [___:12] The end.")
    assert result["text"].startswith("Once upon a time") and result["text"].endswith("The end.")
    assert result["length"] == 1 + 4 + 12 + 3 + 1  # [CLS], the texts' tokens, the blank, [SEP]
    assert "[MASK]" not in result["text"]


def test_an_ending_closes_the_story_at_the_length(tiny_checkpoint_dir, capsys):
    flags = ("--prompt", "Once upon a time", "--ending", "They were friends forever.", "--length", "30")
    result = generate_json(tiny_checkpoint_dir, capsys, *flags)
    assert result["length"] == 30
    assert result["text"].startswith("Once upon a time") and result["text"].endswith("They were friends forever.")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--template", "a [___:4] b", "--prompt", "x"], "--template is the whole story: it takes no --prompt"),
        (["--template", "no blank here"], "has no blank: write one as [___:N]"),
        (["--template", "a [___:0] b"], "a blank of 0 tokens"),
        (["--template", "[___:~3] the end"], "only the last blank can be flexible"),
        (["--template", "a [___:90]"], "more than the model's 64 positions"),
        (["--ending", "The end.", "--prompt", "Once upon a time", "--length", "6"], "leaves no blank"),
    ],
)
def test_stories_the_model_cannot_write_are_one_clear_line(tiny_checkpoint_dir, capsys, flags, message):
    assert main(["generate", "--model", str(tiny_checkpoint_dir), "--no-live", *flags]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("loading model")]
    assert message in err and len(errors) == 1


def test_help_documents_the_blank_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--ending" in out and "[___:N] is N tokens" in out and "[___:~N] at most N" in out
