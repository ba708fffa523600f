"""The one rule for a real component a test needs (Docker, Chromium, Docker Compose) that is missing.

In CI (`CI=true`) the test fails with the reason: a run that could not exercise the component must
not come out green. Elsewhere it skips with the reason and how to get the component. The `gpu`
marker is the one exception: a GPU test skips without CUDA everywhere, since no CI machine has one.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this run is CI's: `CI=true`, as CI services (and .ci/run's caller) set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_component(reason: str, enable: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose real component is missing.

    Args:
        reason: what is missing, e.g. "no Chromium at /usr/bin/chromium".
        enable: how to get it, e.g. "run .ci/setup-browser.sh".
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing component fails the run; {enable})", pytrace=False)
    pytest.skip(f"{reason}: {enable} (with CI=true this is a failure)")
