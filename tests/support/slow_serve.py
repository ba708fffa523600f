"""`storydiff serve` with every model forward `sys.argv[1]` seconds slower, so that a test can signal
it while stories run, with time to spare on a loaded machine: `python -m tests.support.slow_serve DELAY ARGS`.
`STEP_DELAY_S` in the environment also slows every engine iteration by that much a row, forward or
not, as a slow CPU's sampler does (the admission tests: steps that skip the model are not free)."""

from __future__ import annotations

import os
import sys
import time

from app.cli import main
from app.diffusion import cpu_forward
from app.engine.batch import RunningBatch


def slow_down(delay_s: float) -> None:
    original = cpu_forward.logits_at  # the eager forward, which test servers run (tests/conftest.py)

    def slow_logits_at(model, x, query, attention_mask=None):  # type: ignore[no-untyped-def]
        time.sleep(delay_s)
        return original(model, x, query, attention_mask)

    cpu_forward.logits_at = slow_logits_at


def slow_steps(delay_s: float) -> None:
    original = RunningBatch.advance

    def slow_advance(self, forward):  # type: ignore[no-untyped-def]
        time.sleep(delay_s * len(self))
        return original(self, forward)

    RunningBatch.advance = slow_advance  # type: ignore[method-assign]


if __name__ == "__main__":
    slow_down(float(sys.argv[1]))
    if (step_delay_s := float(os.environ.get("STEP_DELAY_S", "0"))) > 0:
        slow_steps(step_delay_s)
    sys.exit(main(["serve", *sys.argv[2:]]))
