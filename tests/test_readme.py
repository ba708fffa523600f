"""The README's examples run as pasted: every fenced block marked `runnable` (```bash runnable,
```python runnable) runs as written against a real uvicorn server, only its address swapped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from tests.conftest import running_server

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M)
README_ADDRESSES = ("http://127.0.0.1:8000", "localhost:8000")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block whose info string says `runnable`."""
    return [(m["info"].split()[0], m["body"]) for m in FENCE.finditer(text) if "runnable" in m["info"].split()[1:]]


RUNNABLE = blocks(README.read_text())


def test_the_readme_marks_its_api_examples_runnable_and_keeps_its_first_block_first():
    languages = [language for language, _ in RUNNABLE]
    assert languages.count("bash") >= 2 and "python" in languages  # the API, the resume, the OpenAI snippet
    first = FENCE.search(README.read_text())
    assert first is not None and first["info"] == "bash" and first["body"].splitlines()[1].endswith("&& pytest")


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    with running_server(Settings(model=str(tiny_checkpoint_dir), device="cpu", port=0)) as (url, _):
        yield url


@pytest.mark.parametrize("language, code", RUNNABLE, ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(RUNNABLE)])
def test_a_runnable_block_runs_as_pasted(server, language, code):
    for address in README_ADDRESSES:
        code = code.replace(address, server if address.startswith("http") else server.removeprefix("http://"))
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
    assert done.stdout.strip() and '"detail"' not in done.stdout and "error" not in done.stdout.lower()
