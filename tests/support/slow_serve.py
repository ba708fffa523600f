"""`storydiff serve` with every model forward `sys.argv[1]` seconds slower, so that a test can signal
it while stories run, with time to spare on a loaded machine: `python -m tests.support.slow_serve DELAY ARGS`."""

from __future__ import annotations

import sys
import time

from app.cli import main
from app.diffusion import cpu_forward


def slow_down(delay_s: float) -> None:
    original = cpu_forward.logits_at  # the eager forward, which test servers run (tests/conftest.py)

    def slow_logits_at(model, x, query, attention_mask=None):  # type: ignore[no-untyped-def]
        time.sleep(delay_s)
        return original(model, x, query, attention_mask)

    cpu_forward.logits_at = slow_logits_at


if __name__ == "__main__":
    slow_down(float(sys.argv[1]))
    sys.exit(main(["serve", *sys.argv[2:]]))
