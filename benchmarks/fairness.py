"""One greedy client beside several normal ones against a real `storydiff serve`: do the normal clients'
stories stay fast, and are any of them refused, while the greedy client holds its quota?

Starts `python -m app` on a free port with one API key per client (a client is its key), then runs
two phases: the normal clients alone, each writing `--stories` stories one after another, and the
same again while the greedy client keeps `--greedy` requests at the cost cap in flight (each one
re-sent as soon as it ends, or after the `Retry-After` of a refusal). Prints the normal clients'
story time in each phase, its ratio (the issue's target: within 1.5x) and how many normal requests
were refused (target: 0).

    python benchmarks/fairness.py                              # the shipped model, server defaults
    python benchmarks/fairness.py --server-flag=--client-max-cost=none --server-flag=--client-max-requests=none
                                                               # no quotas: what the greedy client does then
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.port_check import free_port

ROOT = Path(__file__).resolve().parent.parent
GREEDY_KEY = "greedy"
RETRY_422_S = 5.0  # a request the server says cannot finish even alone: tried again this much later


@dataclass
class Tally:
    """What one phase's normal clients (and the greedy one) saw."""

    seconds: list[float] = field(default_factory=list)
    refused: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # status and detail -> normal requests that failed
    greedy: dict[str, int] = field(default_factory=dict)  # status (or "held": still running at the end) -> count

    def line(self, name: str) -> str:
        times = sorted(self.seconds) or [float("nan")]
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        greedy = " ".join(f"{status}:{n}" for status, n in sorted(self.greedy.items())) or "-"
        return (
            f"{name:<14} normal stories {len(self.seconds):>3}, p50 {statistics.median(times):6.2f} s, "
            f"p90 {p90:6.2f} s; refused {self.refused}, failed {sum(self.failed.values())} {self.failed or ''}; "
            f"greedy answers {greedy}"
        )


async def normal_client(url: str, key: str, request: dict, stories: int, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=900) as client:
        for _ in range(stories):
            started = time.perf_counter()
            answer = await client.post("/generate", json=request)
            if answer.status_code == 200:
                tally.seconds.append(time.perf_counter() - started)
            elif answer.status_code == 429:
                tally.refused += 1
            else:
                key = f"{answer.status_code} {answer.text[:80]}"
                tally.failed[key] = tally.failed.get(key, 0) + 1


async def greedy_client(url: str, request: dict, stop: asyncio.Event, tally: Tally) -> None:
    """One of the greedy client's slots: a request at the cap, again as soon as it ends or is refused."""
    headers = {"Authorization": f"Bearer {GREEDY_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=900) as client:
        while not stop.is_set():
            task = asyncio.ensure_future(client.post("/generate", json=request))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # the phase is over: leaving cancels the request on the server
                tally.greedy["held"] = tally.greedy.get("held", 0) + 1
                task.cancel()
                stopped.cancel()
                return
            stopped.cancel()
            answer = task.result()
            tally.greedy[str(answer.status_code)] = tally.greedy.get(str(answer.status_code), 0) + 1
            if answer.status_code != 200:  # as a client that honours Retry-After (a flood is the proxy's to limit)
                wait_s = float(answer.headers.get("retry-after", RETRY_422_S))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)


async def phase(url: str, args: argparse.Namespace, greedy: bool) -> Tally:
    tally, stop = Tally(), asyncio.Event()
    request = {"length": args.length, "steps": args.steps} if args.length else {}
    at_cap = {"length": args.greedy_length, "steps": args.greedy_steps}
    hogs = [asyncio.ensure_future(greedy_client(url, at_cap, stop, tally)) for _ in range(args.greedy if greedy else 0)]
    if hogs:
        await asyncio.sleep(args.head_start)  # the greedy client holds its quota before the others arrive
    keys = [f"normal-{i}" for i in range(args.clients)]
    await asyncio.gather(*(normal_client(url, key, request, args.stories, tally) for key in keys))
    stop.set()
    await asyncio.gather(*hogs)
    return tally


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    keys = ",".join([GREEDY_KEY, *(f"normal-{i}" for i in range(args.clients))])
    env = {**os.environ, "STORYDIFF_API_KEYS": keys}
    flags = ["--port", str(port), "--threads", str(args.threads), "--log-level", "warning", *args.server_flag]
    if args.model:
        flags += ["--model", args.model]
    return subprocess.Popen([sys.executable, "-m", "app", *flags], cwd=ROOT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the server's --model (default: the shipped model)")
    parser.add_argument("--clients", type=int, default=3, help="normal clients, each its own API key")
    parser.add_argument("--stories", type=int, default=3, help="stories each normal client writes, one at a time")
    parser.add_argument("--length", type=int, default=0, help="normal stories' length (0: the server's default)")
    parser.add_argument("--steps", type=int, default=128, help="normal stories' steps (with --length)")
    parser.add_argument("--greedy", type=int, default=8, help="requests the greedy client keeps in flight")
    parser.add_argument("--greedy-length", type=int, default=256)
    parser.add_argument("--greedy-steps", type=int, default=1024, help="256 x 1024: the default cost cap")
    parser.add_argument("--head-start", type=float, default=2.0, help="seconds the greedy client starts first")
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads")
    parser.add_argument("--server-flag", action="append", default=[], help="another `storydiff serve` flag")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        load = os.getloadavg()[0]
        print(
            f"fairness: {args.clients} normal clients x {args.stories} stories "
            f"({f'{args.length} x {args.steps}' if args.length else 'server defaults'}), one greedy client keeping "
            f"{args.greedy} requests of {args.greedy_length} x {args.greedy_steps} in flight; server flags "
            f"{' '.join(args.server_flag) or '(defaults)'}; load average {load:.2f} before",
            flush=True,
        )
        alone = asyncio.run(phase(url, args, greedy=False))
        print(alone.line("alone"), flush=True)
        beside = asyncio.run(phase(url, args, greedy=True))
        print(beside.line("beside greedy"), flush=True)
        ratio = statistics.median(beside.seconds) / statistics.median(alone.seconds)
        print(
            f"story time beside the greedy client / alone (p50): {ratio:.2f}x (target <= 1.5); normal requests "
            f"refused beside it: {beside.refused} (target 0); load average {os.getloadavg()[0]:.2f} after"
        )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
