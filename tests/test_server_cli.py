"""`python -m app` (= `storydiff serve`) as a real process: serve, stream, and stop gracefully on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from app.cli import main
from app.config import Settings
from app.flags import flag_name
from app.serve_cli import add_serve_arguments, serve, settings_from_args
from tests.conftest import free_port
from tests.support.server_process import LONG_LENGTH, save_long_checkpoint, start_server, wait_ready


@pytest.fixture(scope="module")
def long_checkpoint_dir(tmp_path_factory, cased_tokenizer) -> Path:
    return save_long_checkpoint(tmp_path_factory.mktemp("long-checkpoint"), cased_tokenizer)


@pytest.mark.slow
def test_serve_stream_and_graceful_stop(long_checkpoint_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(long_checkpoint_dir, port, "--shutdown-grace", "0", "--ping-interval", "1")
    try:
        wait_ready(process, url)
        story = httpx.post(f"{url}/generate", json={"length": 24, "steps": 4, "seed": 1}, timeout=30)
        assert story.status_code == 200 and story.json()["seed"] == 1

        request = {"stream": True, "length": LONG_LENGTH, "steps": LONG_LENGTH, "remasking": "low_confidence"}
        names = []
        with httpx.Client(timeout=30) as client, connect_sse(client, "POST", f"{url}/generate", json=request) as source:
            for event in source.iter_sse():
                if not event.data:
                    continue  # a keep-alive comment
                names.append(event.event)
                if len(names) == 1:
                    process.send_signal(signal.SIGINT)  # Ctrl-C while the story is half-written
                last = json.loads(event.data)
        assert names[0] == "step" and names[-1] in ("error", "done")
        if names[-1] == "error":
            assert last["error"] == "shutdown"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = process.communicate()[0]
    assert "ready: model" in log and "Traceback" not in log


def test_a_model_that_cannot_load_stops_the_server(tmp_path, caplog):
    """In-process (a second interpreter start costs seconds): `serve` exits 1 and says why."""
    settings = Settings(model=str(tmp_path / "missing"), port=free_port(), log_level="warning")
    assert asyncio.run(serve(settings)) == 1
    assert "does not exist" in caplog.text


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("STORYDIFF_MAX_BATCH", "7")
    monkeypatch.setenv("STORYDIFF_PORT", "9000")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--port", "8123", "--ping-interval", "2.5", "--threads", "none"]))
    assert (settings.max_batch, settings.port, settings.ping_interval, settings.threads) == (7, 8123, 2.5, None)


def test_invalid_settings_are_one_line_and_no_server(capsys):
    assert main(["serve", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "storydiff serve: error: --max-batch (or STORYDIFF_MAX_BATCH): Input should be greater than or equal to 1"
    )


def test_help_documents_every_setting_with_its_real_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    text, squashed = " ".join(out.split()), "".join(out.split())  # argparse wraps paths at hyphens too
    for name, info in Settings.model_fields.items():
        assert info.description, f"Settings.{name} has no description for --help"
        described = " ".join(info.description.split())
        shown = described if info.default is None else f"{described} (default: {info.default})"
        assert flag_name(name) in text and "".join(shown.split()) in squashed, name
