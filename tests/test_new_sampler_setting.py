"""A sampler setting declared once reaches every surface with no other edit: the request schemas
(/generate and /v1), GET /info, `storydiff generate`'s flags, and the page's form and request.

A scratch copy of app/ gets one new field in `SamplerSettings` (nothing else changes); a real
server and the CLI then run from that copy in subprocesses, and Chromium drives the page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.support.browser import needs_chromium, open_advanced, panel
from tests.support.server_process import wait_ready

pytestmark = needs_chromium

ROOT = Path(__file__).resolve().parent.parent
STORYDIFF = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]  # from the copy
ANCHOR = "    def override(self, overrides: BaseModel) -> SamplerSettings:"
NEW_FIELD = """    test_knob: int = Field(
        3, ge=1, le=9, description="A setting a test added.", **_shown("Test knob", "added by a test")
    )

"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of app/ (less the shipped model) whose SamplerSettings has one more field."""
    root = tmp_path_factory.mktemp("scratch")
    shutil.copytree(ROOT / "app", root / "app", ignore=shutil.ignore_patterns("models", "__pycache__"))
    declaration = root / "app" / "diffusion" / "sampler_settings.py"
    text = declaration.read_text()
    assert text.count(ANCHOR) == 1, "the test's anchor moved: update ANCHOR"
    declaration.write_text(text.replace(ANCHOR, NEW_FIELD + ANCHOR))
    return root


def run_env(scratch: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{scratch}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server(scratch, tiny_checkpoint_dir):
    """`storydiff serve` run from the scratch copy (`python -m app` in it: the copy comes first on sys.path)."""
    port = free_port()
    flags = ["--model", str(tiny_checkpoint_dir), "--device", "cpu", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen([sys.executable, "-m", "app", *flags], env=run_env(scratch), cwd=scratch)
    try:
        wait_ready(process, url := f"http://127.0.0.1:{port}", timeout_s=90)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_new_setting_is_in_the_request_schemas_and_info(server):
    schemas = httpx.get(f"{server}/openapi.json").json()["components"]["schemas"]
    for request in ("GenerateRequest", "CompletionRequest"):
        knob = schemas[request]["properties"]["test_knob"]
        assert (knob["minimum"], knob["maximum"]) == (1, 9), request
    assert httpx.get(f"{server}/info").json()["defaults"]["test_knob"] == 3
    refused = httpx.post(f"{server}/generate", json={"test_knob": 10, "steps": 2})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "test_knob"]


def test_the_new_setting_is_a_flag_of_generate(scratch):
    shown = subprocess.run(
        [*STORYDIFF, "generate", "--help"],
        env=run_env(scratch),
        cwd=scratch,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--test-knob" in shown.stdout and "A setting a test added." in shown.stdout


def test_the_new_setting_is_a_field_of_the_page_and_of_its_request(server, browser_context):
    page = browser_context.new_page()
    try:
        page.goto(server)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        section = panel(page)
        open_advanced(section)
        knob = section.get_by_label("Test knob", exact=True)
        expect(knob).to_have_value("3")  # the default, from GET /info
        assert (knob.get_attribute("min"), knob.get_attribute("max")) == ("1", "9")
        knob.fill("7")
        section.get_by_label("Steps", exact=True).fill("2")
        with page.expect_request(lambda request: request.url.endswith("/generate")) as sent:
            section.locator("[data-ref=generate]").click()
        assert json.loads(sent.value.post_data or "{}")["test_knob"] == 7
        expect(section.locator("[data-ref=final]")).to_be_visible()
    finally:
        page.close()
