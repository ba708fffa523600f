"""Mixed lengths in one batch: one padded forward against a forward per length group, in one run.

A short request beside a long one advances once per engine iteration, so it is bound to the
iteration's cadence; what the engine controls is how long an iteration takes. With every row padded
to the longest, the short row's positions cost as much as the long one's; split by length, an
iteration costs one more pass and no padding. The engine decides from a cost model it measures at
warm-up (`ForwardCost`: a fixed cost per pass plus a cost per position). This prints, for the
shipped model at its default settings, the short request's time alone, beside a long request with
one padded pass forced, and beside it with the measured model, and the iteration times.

    python benchmarks/mixed_lengths.py --short 32 --long 256 --threads 2
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.engine import Engine, Failed, Finished, GenerationSpec, Update
from app.engine.forward_plan import ONE_PASS


def run(engine: Engine, specs: list[GenerationSpec]) -> list[float]:
    """Submit `specs` at once; seconds until each finished."""
    done = [threading.Event() for _ in specs]
    seconds = [0.0] * len(specs)
    started = time.perf_counter()
    for i, spec in enumerate(specs):

        def publish(update: Update, i: int = i) -> None:
            if isinstance(update, (Finished, Failed)):
                seconds[i] = time.perf_counter() - started
                done[i].set()

        engine.submit(spec, publish, timeout_s=3600)
    for event in done:
        event.wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--short", type=int, default=32, help="tokens of the short request")
    parser.add_argument("--long", type=int, default=256, help="tokens of the long request")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model, device="cpu")
    settings = ckpt.config.sampler_settings
    engine = Engine.from_checkpoint(ckpt, max_batch=4)
    engine.start()
    engine.warm_up()
    measured = engine.forward_cost
    print(
        f"cpu, {args.threads} threads; measured cost: {measured.per_pass_s * 1e3:.2f} ms a pass "
        f"+ {measured.per_position_s * 1e6:.2f} us a position; {settings.steps} steps"
    )
    short = GenerationSpec((), args.short, settings, seed=1)
    long = GenerationSpec((), args.long, settings, seed=2)
    cases = [("short alone", ONE_PASS, [short]), ("beside long, one padded pass", ONE_PASS, [short, long])]
    cases.append(("beside long, measured model", measured, [short, long]))
    for name, cost, specs in cases:
        engine.forward_cost = cost
        before = engine.stats.snapshot()
        seconds = run(engine, specs)
        after = engine.stats.snapshot()
        iterations = after.iterations - before.iterations
        passes = after.forward_calls - before.forward_calls
        print(
            f"{name:<30} short {seconds[0]:6.2f} s"
            + (f", long {seconds[1]:6.2f} s" if len(seconds) > 1 else "")
            + f"; {iterations} iterations, {passes} passes, {max(seconds) / iterations * 1e3:6.1f} ms an iteration",
            flush=True,
        )
    engine.stop()


if __name__ == "__main__":
    main()
