"""`storydiff --help` and its commands' help: instant, without the web framework or the model stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("fastapi", "uvicorn", "starlette", "torch", "transformers", "accelerate", "datasets")

IMPORTED_BY_HELP = """
import json, sys
from app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([name for name in {heavy} if name in sys.modules]), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "command", [[], ["generate"], ["serve"], ["train"]], ids=["storydiff", "generate", "serve", "train"]
)
def test_help_imports_nothing_heavy(command):
    script = IMPORTED_BY_HELP.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", script, *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: storydiff" in done.stdout
    assert json.loads(done.stderr.splitlines()[-1]) == []
