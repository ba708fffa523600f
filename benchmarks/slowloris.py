"""Slowloris against a real `storydiff serve`: do idle and slow-header connections get closed, and does
/health stay fast while they come back?

Starts `python -m app` on a free port, measures GET /health (a new connection each time, every
`--probe-interval` s) for `--seconds` without an attack, then again while `--connections` attackers
each connect, send a request line and then one header line every `--trickle` s, reconnecting as soon
as the server closes them (the classic attack). Half the attackers send nothing at all (idle).
Prints /health's answers and latency per phase, and how long the server let attack connections live.

    python benchmarks/slowloris.py                                  # 200 attackers, --header-timeout 10
    python benchmarks/slowloris.py --connections 1100 --max-connections 1000   # above the limit: 503s
    python benchmarks/slowloris.py --header-timeout 1e9             # no header deadline (uvicorn alone)

What one process cannot do: an attacker with more connections than `--max-connections` keeps /health
at 503 however fast the server closes them; a reverse proxy's per-client limits cover that
(docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.port_check import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Phase:
    """What the prober and the attackers saw in one phase."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    lifetimes_s: list[float] = field(default_factory=list)  # attack connections the server closed

    def row(self) -> str:
        lat = sorted(self.latencies_ms) or [float("nan")]
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        life = f"{statistics.median(self.lifetimes_s):.1f}" if self.lifetimes_s else "-"
        answers = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.name:<10} {answers:<24} {statistics.median(lat):>8.1f} {p99:>8.1f} "
            f"{len(self.lifetimes_s):>8} {life:>10}"
        )


async def probe(url: str, phase: Phase, until: float, interval_s: float) -> None:
    no_reuse = httpx.Limits(max_keepalive_connections=0)  # a new connection each time, as a new visitor
    async with httpx.AsyncClient(timeout=10, limits=no_reuse) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                status = str((await client.get(f"{url}/health")).status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            phase.latencies_ms.append((time.perf_counter() - started) * 1e3)
            phase.statuses[status] = phase.statuses.get(status, 0) + 1
            await asyncio.sleep(interval_s)


async def attacker(port: int, phase: Phase, until: float, trickle_s: float, idle: bool) -> None:
    """Hold one connection open as long as the server lets it, then reconnect."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened, closed = time.monotonic(), False
        try:
            if not idle:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < until:
                try:
                    data = await asyncio.wait_for(reader.read(1024), trickle_s)
                except asyncio.TimeoutError:
                    data = None
                if data == b"":
                    closed = True  # EOF: the server closed it
                    break
                if not idle:
                    writer.write(b"X-Slow: a\r\n")
                    await writer.drain()
        except OSError:
            closed = True  # reset by the server
        finally:
            writer.close()
        if closed:
            phase.lifetimes_s.append(time.monotonic() - opened)


async def run_phase(args: argparse.Namespace, url: str, port: int, name: str, attackers: int) -> Phase:
    phase = Phase(name)
    until = time.monotonic() + args.seconds
    tasks = [attacker(port, phase, until, args.trickle, idle=i % 2 == 0) for i in range(attackers)]
    await asyncio.gather(probe(url, phase, until, args.probe_interval), *tasks)
    return phase


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    flags = [
        "--port",
        str(port),
        "--threads",
        "1",
        "--log-level",
        "error",
        "--header-timeout-s",
        str(args.header_timeout),
    ]
    flags += ["--max-connections", str(args.max_connections)] + (["--model", args.model] if args.model else [])
    return subprocess.Popen([sys.executable, "-m", "app", *flags], cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200, help="attackers (half idle, half trickling)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--trickle", type=float, default=2.0, help="seconds between a slow client's header lines")
    parser.add_argument("--probe-interval", type=float, default=0.1, help="seconds between /health probes")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="the server's --header-timeout")
    parser.add_argument("--max-connections", type=int, default=1000, help="the server's --max-connections")
    parser.add_argument("--model", help="checkpoint to serve (default: the shipped one)")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            time.sleep(0.2)
        print(
            f"header_timeout {args.header_timeout:g} s, max_connections {args.max_connections}, "
            f"{args.connections} attackers (half idle, half a header line every {args.trickle:g} s), "
            f"{args.seconds:g} s per phase"
        )
        print(f"{'phase':<10} {'/health answers':<24} {'p50 ms':>8} {'p99 ms':>8} {'closed':>8} {'life p50 s':>10}")
        for name, attackers in (("baseline", 0), ("slowloris", args.connections)):
            print(asyncio.run(run_phase(args, url, port, name, attackers)).row(), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
