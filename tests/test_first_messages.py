"""The messages a newcomer meets first: a server that cannot load its model says so once, without
claiming it runs; a training run stopped before its first checkpoint does not send you to
`--resume auto`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.serve_cli import announce_forward_cost
from model_training import cli as train_cli
from model_training.checkpoints import STATE_FILE, checkpoints_dir
from tests.support.service import Service, settings_for


def test_a_server_without_its_model_says_why_once_and_never_that_it_runs():
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    args = ["-m", "app.cli", "serve", "--model", "someone/not-a-model", "--port", "0"]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("is neither a local directory nor in the Hugging Face cache") == 1, done.stderr
    assert "Uvicorn running" not in done.stderr and "uvicorn.error" not in done.stderr
    assert "listening on http://127.0.0.1:" in done.stderr and "storydiff ready" not in done.stderr


@pytest.mark.parametrize("saved", [False, True])
def test_an_interrupted_run_says_whether_there_is_anything_to_resume(tmp_path, monkeypatch, capsys, saved):
    if saved:
        state = checkpoints_dir(tmp_path) / "step-5"
        state.mkdir(parents=True)
        (state / STATE_FILE).write_text("{}")

    def interrupted(cfg):  # Ctrl-C inside the loop
        raise KeyboardInterrupt

    monkeypatch.setattr("model_training.loop.train", interrupted)
    assert train_cli.main(["--config", "tiny-test", "--output", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    if saved:
        assert "resume from step-5 with --resume auto" in err
    else:
        assert "--resume auto" not in err and "nothing to resume" in err


@pytest.mark.anyio
async def test_serve_says_what_a_forward_costs_here(tiny_checkpoint_dir, caplog):
    service = Service(settings_for(tiny_checkpoint_dir))
    async with service:
        with caplog.at_level("INFO", logger="app.serve_cli"):
            announce_forward_cost(service.app.state.runtime)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "forward_cost"]
    assert record.length == 48 and 0 < record.forward_ms < 10_000
    assert f"one forward of a 48-token story takes about {record.forward_ms:.0f} ms here" in record.getMessage()
