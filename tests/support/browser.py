"""Headless Chromium and a real uvicorn for the page's tests: where Chromium is, the server, form helpers."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page

from app.api import create_app
from app.config import Settings
from tests.support.components import require_component

CHROMIUM = os.environ.get("STORYDIFF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = [pytest.mark.browser, pytest.mark.usefixtures("chromium")]
"""A module's `pytestmark` where the page is driven in Chromium: without one it fails in CI, skips elsewhere."""


def chromium_path() -> str:
    """The Chromium the page's tests drive; missing, the test fails in CI and skips elsewhere."""
    if not Path(CHROMIUM).is_file():
        require_component(f"no Chromium at {CHROMIUM}", "run .ci/setup-browser.sh, or set STORYDIFF_CHROMIUM")
    return CHROMIUM


class LiveServer:
    """The real service on a free port of 127.0.0.1, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while httpx.get(f"{self.url}/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def engine(self) -> dict:
        return httpx.get(f"{self.url}/info").json()["engine"]

    def wait_idle(self, timeout_s: float = 10.0) -> dict:
        """The engine's counters once no request is active or waiting."""
        deadline = time.monotonic() + timeout_s
        while (engine := self.engine())["active"] or engine["waiting"]:
            assert time.monotonic() < deadline, f"the engine stayed busy: {engine}"
            time.sleep(0.05)
        return engine

    def cut_connections(self) -> None:
        """Reset every open TCP connection, as a network failure would: no goodbye on either side."""
        for connection in list(self.server.server_state.connections):
            connection.loop.call_soon_threadsafe(connection.transport.abort)


def panel(page: Page, n: int = 1):
    return page.locator("section.panel").nth(n - 1)


FRONT_FIELDS = {"prompt", "preset", "length", "seed"}
"""The fields a panel shows before its Advanced fold is opened."""


def open_advanced(section) -> None:
    """Unfold a panel's sampler fields (the page starts with them folded)."""
    section.locator("details.advanced").evaluate("d => { d.open = true; }")


def fill(section, **fields) -> None:
    labels = {
        "length": "Length",
        "steps": "Steps",
        "temperature": "Temperature",
        "top_k": "Top-k",
        "top_p": "Top-p",
        "block_length": "Block length",
        "seed": "Seed",
        "stream_every": "Show every",
        "revision": "Revision",
        "prompt": "Prompt",
    }
    selects = {"remasking": "Remasking", "endings": "End rule", "preset": "Preset"}
    if set(fields) - FRONT_FIELDS:
        open_advanced(section)
    for name, value in fields.items():
        if name in selects:
            section.get_by_label(selects[name], exact=True).select_option(value)
        else:
            section.get_by_label(labels[name], exact=True).fill(str(value))
