"""`storydiff generate`'s first seconds: mistakes refused before torch loads, a loading line at once,
a quiet end when the reader leaves, the API's fields under --json, a typo'd flag's nearest flag."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.api.schemas import GenerateResponse
from app.cli import main

REFUSED_WITHOUT_TORCH = """
import sys
from app.cli import main
code = main(["generate", *sys.argv[1:]])
assert "torch" not in sys.modules, "torch was imported before the refusal"
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/checkpoint"], "does not exist"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--length", "9999"], "above the model's 256 positions"),
        (["--template", "Once upon a time."], "--template has no blank"),
        (["--prompt", "Once [___:5] end.", "--length", "40"], "leave out --length"),
    ],
)
def test_mistakes_are_refused_in_one_line_before_torch_loads(args, message):
    done = subprocess.run([sys.executable, "-c", REFUSED_WITHOUT_TORCH, *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"storydiff generate: error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert message in done.stderr and "loading model" not in done.stderr


def test_a_loading_line_comes_first_and_a_closed_pipe_ends_quietly(tiny_checkpoint_dir):
    args = ["--model", str(tiny_checkpoint_dir), "--steps", "4", "--seed", "1", "--prompt", "Once upon a time"]
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "generate", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None and process.stdout is not None
    first = process.stderr.readline()  # read before the story is written: it came before the model loaded
    process.stdout.close()  # the reader leaves, as `| head -0` does
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 0, rest
    assert first == f"loading model {tiny_checkpoint_dir.name}…\n"
    assert "Traceback" not in rest and "BrokenPipeError" not in rest


def test_json_has_the_api_answers_fields_and_names_the_model(tiny_checkpoint_dir, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint_dir), "--steps", "4", "--seed", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(GenerateResponse.model_fields) - {"request_id"} <= set(result)
    assert result["model"] == tiny_checkpoint_dir.name and result["steps"] == 4
    assert result["tokens_per_forward"] == pytest.approx(result["length"] / result["forwards"])  # all written


def test_a_typod_flag_names_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["generate", "--stpes", "4"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "usage: storydiff generate" in err
    assert "unrecognized arguments: --stpes 4; did you mean --steps?" in err
