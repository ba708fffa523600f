"""Engine throughput: how many people can watch stories denoise at once on one device, and how fast one is.

Everything runs in one process on one device, so that the rows compare:

1. reference: the papers' demo loop (LLaDA's generate.py, Nie et al. 2025 Algorithm 4), one story at a
   time in float32: each step a full forward over the whole sequence, argmax at every masked position,
   and each of them stays masked with probability s/t. T = L.
2. engine: the step-level batching engine in-process (no HTTP), C requests submitted at once
   (max_batch = C, each its own seed, stream_every=1), at the model's own sampler settings, with the
   server's forward (CUDA graphs on a GPU, compiled before timing; eager on a CPU and with --eager).
3. http (`--http`): the same through a real `storydiff serve` subprocess (max_batch = max_queue =
   the largest C) and C concurrent SSE clients (httpx + httpx-sse, each wave a fresh client, so that
   time to first step includes connecting); adds complete streams, 429s, errors and the server's RSS.
4. stub (`--stub`, instead of 1-3): the engine with a forward that returns zero logits at no cost,
   so that only the engine and the sampler run (target: at most 6 ms per iteration at 64 active with
   a vocabulary of 8192), at each vocabulary of `--stub-vocab` (default: the model's).

Each `--sampler` (repeatable) runs the grid again with the model's settings changed, e.g.
`--sampler default --sampler top_p=null --sampler temperature=0` (values as JSON: null, 0, 0.9).
`--table` writes the rows as a Markdown table (stub runs: ms per iteration, sampler by vocabulary),
headed by the CPU model and the load average before and after (Linux).

Columns: stories/s and tokens/s (length x stories / wall); p50/p99 of the time from submission to the
first step event (ttfs; p95 too in --json) and to the end (done); forward calls per story and mean
sequences per forward call; per engine iteration: wall time, time inside the forward (the forward
callable is wrapped in a timer that synchronises CUDA before reading the clock) and engine overhead =
iteration - forward.
Each (model, C) runs `--rounds` waves of C requests after one warm-up request; the reference runs one
warm-up forward first.

Models: `default` is the shipped model (or `--model-dir`) at its checkpoint's sampler settings and
length; `base66m` is a random-init DistilBERT of distilbert-base-cased's shape (66M parameters, 512
positions), L = T = 512, random remasking, temperature 0 (argmax, as the reference).

    python benchmarks/engine_throughput.py --json engine.json        # the full grid; GPU: bf16
    python benchmarks/engine_throughput.py --quick                   # 2 CPU cores: 1.5-3 minutes
    python benchmarks/engine_throughput.py --stub                    # engine + sampler at C = 1, 8, 64
    python benchmarks/engine_throughput.py --stub --threads 1 --stub-vocab 64,8192 --sampler default \
        --sampler top_p=null --sampler temperature=0 --json docs/engine-stub.json --table engine-stub.md
    python benchmarks/engine_throughput.py --http --models default --concurrency 1,8,64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

import app
from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, Checkpoint, load_checkpoint, save_checkpoint
from app.diffusion.cpu_backend import CPU_BACKENDS
from app.diffusion.devices import select_dtype
from app.diffusion.diffusion_config import DiffusionConfig
from app.diffusion.sampler_settings import Remasking, SamplerOverrides, SamplerSettings
from app.diffusion.sampling import diffusion_time
from app.diffusion.text import end_token_ids
from app.engine import Engine, Failed, GenerationSpec, StepUpdate
from app.engine.model_forward import CheckpointForward

try:  # --http only: the dev extras
    import httpx
    from httpx_sse import aconnect_sse
except ImportError:
    httpx = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
CASED_VOCAB_DIR = ROOT / "tests" / "data" / "tokenizers" / "distilbert-base-cased"
MODELS = ("default", "base66m")
GRIDS = {  # option -> default, when --quick, when --stub
    "models": ("default,base66m", "default", "default,base66m"),
    "concurrency": ("1,8,64,256", "1,8", "1,8,64"),
    "rounds": (2, 1, 2),
    "reference_stories": (3, 1, 0),
}
TABLE = (  # (row key, header, format spec): the header's length is the column's width
    ("model", "model   ", "<"),
    ("sampler", "sampler       ", "<"),
    ("vocab_size", "vocab", ">"),
    ("mode", "mode     ", "<"),
    ("concurrency", "   C", ">"),
    ("stories", "stories", ">"),
    ("stories_per_s", "stories/s", ">.3f"),
    ("tokens_per_s", " tokens/s", ">.0f"),
    ("ttfs_p50_ms", "ttfs p50 ms", ">.1f"),
    ("ttfs_p99_ms", "ttfs p99 ms", ">.1f"),
    ("done_p50_s", "done p50 s", ">.2f"),
    ("done_p99_s", "done p99 s", ">.2f"),
    ("forwards_per_story", "fwd/story", ">.1f"),
    ("seqs_per_forward", "seq/fwd", ">.1f"),
    ("iter_ms", " iter ms", ">.2f"),
    ("forward_ms_per_iter", "  fwd ms", ">.2f"),
    ("overhead_ms_per_iter", " ovh ms", ">.2f"),
    ("overhead_pct", " ovh %", ">.1f"),
    ("complete", "   ok", ">"),
    ("rejected_429", " 429", ">"),
    ("errors", " err", ">"),
    ("rss_mib", "server RSS MiB", ">"),
)


@dataclass
class Subject:
    """A model under test: its checkpoint at the benchmark's dtype and the story it writes."""

    name: str
    directory: Path
    ckpt: Checkpoint
    length: int
    sampler: SamplerSettings


@dataclass
class Timeline:
    """One request's clock readings (time.perf_counter)."""

    submitted: float
    first_step: float | None = None
    done: float | None = None
    failure: str | None = None


class TimedForward:
    """A forward callable that adds up the seconds spent inside it, the device synchronised."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device) -> None:
        self.forward, self.seconds, self.calls = forward, 0.0, 0
        self.sync = functools.partial(torch.cuda.synchronize, device) if device.type == "cuda" else (lambda: None)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.sync()  # work queued before (the sampler's) is not the forward's
        start = time.perf_counter()
        logits = self.forward(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return logits


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile; None for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] if ordered else None


def story_columns(subject: Subject, timelines: Sequence[Timeline], wall_s: float) -> dict[str, Any]:
    """Stories and tokens per second, and p50/p95/p99 time to the first step, p50/p99 to the end."""
    complete = [t for t in timelines if t.done is not None and t.failure is None]
    ttfs_ms = [(t.first_step - t.submitted) * 1e3 for t in complete if t.first_step is not None]
    done_s = [t.done - t.submitted for t in complete]
    return {
        "model": subject.name,
        "length": subject.length,
        "steps": subject.sampler.steps,
        "stories": len(complete),
        "errors": len(timelines) - len(complete),
        "wall_s": wall_s,
        "stories_per_s": len(complete) / wall_s,
        "tokens_per_s": subject.length * len(complete) / wall_s,
        **{f"ttfs_p{q}_ms": percentile(ttfs_ms, q) for q in (50, 95, 99)},
        **{f"done_p{q}_s": percentile(done_s, q) for q in (50, 99)},
    }


def work_columns(
    iterations: int, forward_calls: int, sequences: int, busy_s: float, stories: int, forward_s: float | None
) -> dict[str, Any]:
    """Forward calls per story, sequences per call, and per iteration: wall, forward and the rest (overhead)."""
    per_iteration_ms = 1e3 / max(iterations, 1)
    columns = {
        "iterations": iterations,
        "forward_calls": forward_calls,
        "forwards_per_story": forward_calls / max(stories, 1),
        "seqs_per_forward": sequences / max(forward_calls, 1),
        "iter_ms": busy_s * per_iteration_ms,
    }
    if forward_s is not None:
        columns |= {
            "forward_s": forward_s,
            "forward_ms_per_iter": forward_s * per_iteration_ms,
            "overhead_ms_per_iter": (busy_s - forward_s) * per_iteration_ms,
            "overhead_pct": 100 * (busy_s - forward_s) / busy_s,
        }
    return columns


def wave_wall(timelines: Sequence[Timeline]) -> float:
    """From the first submission to the last outcome."""
    return max(t.done or t.submitted for t in timelines) - min(t.submitted for t in timelines)


# --- the reference demo loop ---------------------------------------------------------------------


def reference_step(
    forward: Callable, x: torch.Tensor, index: int, steps: int, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """One step of the reference recipe: predict every masked token, keep each with probability 1 - s/t."""
    t, s = diffusion_time(index, steps), diffusion_time(index + 1, steps)
    logits = forward(x)  # (1, L, V) at every position
    logits[..., mask_id] = -math.inf
    x0 = logits.argmax(dim=-1)  # (1, L)
    remask = torch.rand(x.shape, generator=generator, device=x.device) < s / t  # (1, L)
    return torch.where((x == mask_id) & ~remask, x0, x)


@torch.inference_mode()
def reference_row(subject: Subject, model: torch.nn.Module, stories: int) -> dict[str, Any]:
    """Stories one at a time through the reference loop: batch 1, argmax, T = L."""
    device, mask_id, steps = subject.ckpt.device, subject.ckpt.mask_id, subject.length
    timed = TimedForward(lambda x: model(input_ids=x).logits, device)
    timed(torch.full((1, subject.length), mask_id, device=device))  # warm-up
    timed.seconds = timed.calls = 0
    timelines = []
    for seed in range(1, stories + 1):
        generator = torch.Generator(device=device).manual_seed(seed)
        x = torch.full((1, subject.length), mask_id, dtype=torch.long, device=device)  # (1, L)
        line = Timeline(time.perf_counter())
        for index in range(steps):
            x = reference_step(timed, x, index, steps, mask_id, generator)
            if index == 0:
                timed.sync()
                line.first_step = time.perf_counter()
        timed.sync()
        line.done = time.perf_counter()
        assert not bool((x == mask_id).any()), "the reference loop left a mask"
        timelines.append(line)
    wall_s = sum(t.done - t.submitted for t in timelines)
    return {
        **story_columns(subject, timelines, wall_s),
        "mode": "reference",
        "concurrency": 1,
        "s_per_story": wall_s / stories,
        **work_columns(steps * stories, timed.calls, timed.calls, wall_s, stories, timed.seconds),
    }


# --- the engine in-process -----------------------------------------------------------------------


class Wave:
    """Requests submitted together; notes each one's first step and outcome as the engine publishes."""

    def __init__(self) -> None:
        self.timelines: list[Timeline] = []
        self._open = 0
        self._lock = threading.Lock()
        self.ended = threading.Event()

    def publisher(self) -> Callable[[Any], None]:
        """A `publish` callback for one more request, its clock started now."""
        line = Timeline(time.perf_counter())
        self.timelines.append(line)
        with self._lock:
            self._open += 1

        def publish(update: Any) -> None:
            now = time.perf_counter()
            if isinstance(update, StepUpdate):
                line.first_step = line.first_step or now
                return
            line.done = now
            if isinstance(update, Failed):
                line.failure = f"{update.reason}: {update.message}"
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    self.ended.set()

        return publish


def run_wave(engine: Engine, specs: Sequence[GenerationSpec], timeout_s: float = 3600.0) -> list[Timeline]:
    """Submit `specs` at once and wait for every outcome."""
    wave = Wave()
    for spec in specs:
        engine.submit(spec, wave.publisher(), timeout_s)
    if not wave.ended.wait(timeout_s + 60):
        raise RuntimeError(f"the engine did not finish {len(specs)} requests in {timeout_s + 60:.0f} s")
    return wave.timelines


def engine_row(subject: Subject, forward: Callable, concurrency: int, rounds: int, mode: str) -> dict[str, Any]:
    """`rounds` waves of `concurrency` requests through an engine with max_batch = concurrency."""
    timed, ckpt = TimedForward(forward, subject.ckpt.device), subject.ckpt
    pad_id = ckpt.mask_id if ckpt.tokenizer.pad_token_id is None else int(ckpt.tokenizer.pad_token_id)
    engine = Engine(  # as Engine.from_checkpoint builds the server's, with the forward timed
        timed,
        mask_id=ckpt.mask_id,
        pad_id=pad_id,
        device=ckpt.device,
        max_batch=concurrency,
        max_queue=concurrency,
        typical_length=subject.length,
        end_ids=sorted(end_token_ids(ckpt.tokenizer)),
    )
    engine.start()
    try:
        short = subject.sampler.model_copy(update={"steps": 2})
        (warm_up,) = run_wave(engine, [GenerationSpec((), subject.length, short, seed=0, stream_every=1)], 600.0)
        if warm_up.failure:
            raise RuntimeError(f"the engine failed its warm-up request: {warm_up.failure}")
        before, forward_before = engine.stats.snapshot(), timed.seconds
        timelines, busy_s = [], 0.0
        for first in range(1, rounds * concurrency + 1, concurrency):
            seeds = range(first, first + concurrency)
            wave = run_wave(engine, [GenerationSpec((), subject.length, subject.sampler, s, 1) for s in seeds])
            timelines, busy_s = timelines + wave, busy_s + wave_wall(wave)
        after = engine.stats.snapshot()
    finally:
        engine.stop()
    sequences = sum(n * k for n, k in after.batch_sizes.items()) - sum(n * k for n, k in before.batch_sizes.items())
    return {
        **story_columns(subject, timelines, busy_s),
        "mode": mode,
        "concurrency": concurrency,
        **work_columns(
            after.iterations - before.iterations,
            after.forward_calls - before.forward_calls,
            sequences,
            busy_s,
            len(timelines),
            timed.seconds - forward_before,
        ),
    }


def stub_forward(vocab_size: int, device: torch.device) -> Callable[..., torch.Tensor]:
    """A forward that costs nothing: zero logits (N, V) at the queried positions."""

    def forward(x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        count = int(query.sum()) if query.dtype == torch.bool else query.shape[0]  # the engine passes (N,) indices
        return torch.zeros(count, vocab_size, device=device)  # (N, V)

    return forward


# --- end to end over HTTP ------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    """The resident set size of process `pid` from Linux's /proc; None elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


@contextlib.contextmanager
def running_server(subject: Subject, max_batch: int, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """`storydiff serve` in a subprocess on a free port; yields (base URL, pid) once GET /ready is 200."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = {
        "model": subject.directory,
        "port": port,
        "max-batch": max_batch,
        "max-queue": max_batch,
        "device": subject.ckpt.device,
        "dtype": str(subject.ckpt.dtype).removeprefix("torch."),
        "timeout": 3600,
        "log-level": "warning",
        **({"threads": args.threads} if args.threads else {}),
    }
    command = [sys.executable, "-m", "app.cli", "serve", *(f"--{name}={value}" for name, value in flags.items())]
    command += ["--no-compile"] if args.eager else []
    root = Path(app.__file__).resolve().parent.parent  # so that the server runs the `app` imported here
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 600
    with tempfile.TemporaryFile() as log, subprocess.Popen(command, cwd=root, stdout=log, stderr=log) as server:
        try:
            while not _answers_ready(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not get ready:\n{log.read().decode()[-3000:]}")
                time.sleep(0.2)
            yield url, server.pid
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


def _answers_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


async def stream_story(client: httpx.AsyncClient, body: dict[str, Any]) -> Timeline:
    """POST one streaming /generate and note when its first step and its end arrive."""
    line = Timeline(time.perf_counter())
    try:
        async with aconnect_sse(client, "POST", "/generate", json=body) as source:
            if source.response.status_code != 200:
                line.failure = str(source.response.status_code)
                return line
            async for event in source.aiter_sse():
                if event.event == "step":
                    line.first_step = line.first_step or time.perf_counter()
                elif event.event == "done":
                    line.done = time.perf_counter()
                elif event.event == "error":
                    line.failure = f"error event: {event.data}"
    except httpx.HTTPError as err:
        line.failure = type(err).__name__
    if line.done is None and line.failure is None:
        line.failure = "the stream ended without a done event"
    return line


async def http_wave(url: str, bodies: Sequence[dict[str, Any]]) -> list[Timeline]:
    """One SSE client per body, all at once, each on its own connection."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=3600.0, limits=limits) as client:
        return list(await asyncio.gather(*(stream_story(client, body) for body in bodies)))


def http_row(subject: Subject, url: str, pid: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """`rounds` waves of `concurrency` SSE clients against the running server."""
    body = {"length": subject.length, **subject.sampler.model_dump(mode="json"), "stream": True, "stream_every": 1}
    asyncio.run(http_wave(url, [{**body, "steps": 2, "seed": 0}]))  # warm-up, the HTTP path included
    rss_before, before = rss_mib(pid), httpx.get(f"{url}/info", timeout=30).json()["engine"]
    timelines, busy_s = [], 0.0
    for first in range(1, rounds * concurrency + 1, concurrency):
        wave = asyncio.run(http_wave(url, [{**body, "seed": seed} for seed in range(first, first + concurrency)]))
        timelines, busy_s = timelines + wave, busy_s + wave_wall(wave)
    after, rss_after = httpx.get(f"{url}/info", timeout=30).json()["engine"], rss_mib(pid)
    sequences = sum(int(n) * k for n, k in after["batch_sizes"].items())
    sequences -= sum(int(n) * k for n, k in before["batch_sizes"].items())
    row = {
        **story_columns(subject, timelines, busy_s),
        "mode": "http",
        "concurrency": concurrency,
        "complete": sum(t.failure is None for t in timelines),
        "rejected_429": sum(t.failure == "429" for t in timelines),
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_mib": None if rss_before is None or rss_after is None else f"{rss_before:.0f} -> {rss_after:.0f}",
    }
    counts = [after[name] - before[name] for name in ("iterations", "forward_calls")]
    return {
        **row,
        "errors": row["errors"] - row["rejected_429"],
        **work_columns(*counts, sequences, busy_s, len(timelines), None),
    }


# --- models, the table and the run ---------------------------------------------------------------


def build_base66m(directory: Path) -> Path:
    """A random-init DistilBERT of distilbert-base-cased's shape, saved as a storydiff checkpoint."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(CASED_VOCAB_DIR))
    shape = {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "max_position_embeddings": 512}
    with torch.random.fork_rng(devices=[]):  # weight init reads the global generator; leave it as it was
        torch.manual_seed(0)
        model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tokenizer), **shape))
    sampler = SamplerOverrides(steps=512, remasking=Remasking.RANDOM, temperature=0.0)
    config = DiffusionConfig(seq_len=512, sampler=sampler, trained_on="nothing: random weights for benchmarks")
    return save_checkpoint(directory, model, tokenizer, config)


def shown_path(directory: Path) -> str:
    """A model directory as a report records it: relative to the repository when inside it (no machine's path)."""
    resolved = directory.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(directory)


def load_subject(name: str, model_dir: str, device: torch.device, dtype: torch.dtype, tmp: Path) -> Subject:
    directory = Path(model_dir) if name == "default" else build_base66m(tmp / name)
    ckpt = load_checkpoint(directory, device=device, dtype=dtype)
    return Subject(name, directory, ckpt, ckpt.config.seq_len, ckpt.config.sampler_settings)


def stub_vocabularies(subject: Subject, args: argparse.Namespace) -> list[int]:
    """The stub's vocabulary sizes; each must hold the model's mask and end token ids, which the step indexes."""
    ckpt = subject.ckpt
    vocabs = [int(v) for v in args.stub_vocab.split(",")] if args.stub_vocab else [ckpt.model.config.vocab_size]
    needed = max(ckpt.mask_id, *end_token_ids(ckpt.tokenizer)) + 1
    if too_small := [v for v in vocabs if v < needed]:
        raise SystemExit(f"--stub-vocab {too_small}: {subject.name}'s mask and end tokens need at least {needed}")
    return vocabs


def run_subject(subject: Subject, args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every row of one model: the reference, then per sampler the engine (or the stub, per vocabulary)
    at each concurrency, then HTTP. Returns the engine's forward: its name, warm-up seconds (every planned
    shape prepared) and which shapes run compiled and which eagerly, in-process and in the server."""
    levels, ckpt = [int(c) for c in args.concurrency.split(",")], subject.ckpt
    if args.stub:
        forwards = {vocab: stub_forward(vocab, ckpt.device) for vocab in stub_vocabularies(subject, args)}
        facts = {"forward": "stub"}
    else:
        if args.reference_stories:
            fp32 = ckpt if ckpt.dtype == torch.float32 else load_checkpoint(subject.directory, ckpt.device, "float32")
            emit(reference_row(subject, fp32.model, args.reference_stories))
            del fp32
        forward = CheckpointForward(  # the server's, on a CPU with `--cpu-backend`
            ckpt, compile=False if args.eager else None, cpu_backend=args.cpu_backend, max_rows=max(levels)
        )
        started = time.perf_counter()
        forward.prepare()  # on a GPU: capture every planned shape now
        forwards = {ckpt.model.config.vocab_size: forward}
        facts = {"forward": forward.name, "warm_up_s": time.perf_counter() - started} | shape_split(
            [f"{r}x{w}" for r, w in forward.compiled_shapes],
            {f"{r}x{w}": why for (r, w), why in forward.eager_shapes.items()},
        )
        print(f"{subject.name}: {facts['forward']}, warm-up {facts['warm_up_s']:.1f} s, {facts['split']}", flush=True)
    variants = [(label, dataclasses.replace(subject, sampler=subject.sampler.override(o))) for label, o in args.sampler]
    for label, variant in variants:
        for vocab, forward in forwards.items():
            for concurrency in levels:
                row = engine_row(variant, forward, concurrency, args.rounds, "stub" if args.stub else "engine")
                emit(row | {"sampler": label, "vocab_size": vocab})
    if args.http:
        with running_server(subject, max(levels), args) as (url, pid):
            info = httpx.get(f"{url}/info", timeout=30).json()
            server = {"forward": info["forward"], "warm_up_s": info["warm_up_s"]}
            facts["server"] = server | shape_split(info["compiled_shapes"], info["eager_shapes"])
            print(f"{subject.name} server: {info['forward']}, {facts['server']['split']}", flush=True)
            for label, variant in variants:
                for concurrency in levels:
                    emit(http_row(variant, url, pid, concurrency, args.rounds) | {"sampler": label})
    return facts


def shape_split(compiled: list[str], eager: dict[str, str]) -> dict[str, Any]:
    """The compiled vs eager split of the planned shapes, and why each eager one is."""
    return {
        "compiled_shapes": compiled,
        "eager_shapes": eager,
        "split": f"{len(compiled)} compiled, {len(eager)} eager",
    }


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else `platform`) and the cores this process may use."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was, as `uptime` shows it (None where unknown)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{' --- |' * len(header)}", *(f"| {' | '.join(row)} |" for row in body)]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: where and how it ran, then stub runs as ms per iteration (sampler by
    vocabulary, the concurrency levels in each cell), other runs as the printed table's columns."""
    before, after = (f"{x:.2f}" if x is not None else "unknown" for x in report["load_average"])
    lines = [
        f"`python benchmarks/engine_throughput.py {' '.join(report['argv'])}`: {report['device']} ({report['cpu']}), "
        f"torch {report['torch']}, {report['dtype']}; load average {before} before, {after} after; "
        f"this process's CPU time {report['cpu_s']:.0f} s in {report['wall_s']:.0f} s.",
        "",
    ]
    rows = report["rows"]
    if rows and all(row["mode"] == "stub" for row in rows):
        several = len({row["model"] for row in rows}) > 1
        labels = {id(row): f"{row['model']}, {row['sampler']}" if several else row["sampler"] for row in rows}
        vocabs, levels = (list(dict.fromkeys(row[key] for row in rows)) for key in ("vocab_size", "concurrency"))

        def cell(label: str, vocab: int) -> str:
            ms = [row["iter_ms"] for row in rows if labels[id(row)] == label and row["vocab_size"] == vocab]
            return " / ".join(f"{value:.2f}" for value in ms)

        header = [
            f"sampler (ms per iteration at C = {' / '.join(map(str, levels))})",
            *(f"vocabulary {v:,}" for v in vocabs),
        ]
        lines += markdown_table(
            header, [[label, *(cell(label, v) for v in vocabs)] for label in dict.fromkeys(labels.values())]
        )
    else:
        columns = [
            (key, header.strip(), spec[1:])
            for key, header, spec in TABLE
            if any(row.get(key) is not None for row in rows)
        ]
        body = [["-" if row.get(key) is None else f"{row[key]:{spec}}" for key, _, spec in columns] for row in rows]
        lines += markdown_table([header for _, header, _ in columns], body)
    return "\n".join(lines) + "\n"


def format_row(row: dict[str, Any]) -> str:
    """One table line; a column the row does not have shows as '-'."""
    cells = []
    for key, header, spec in TABLE:
        value, align, precision = row.get(key), spec[0], spec[1:]
        cells.append(f"{'-':>{len(header)}}" if value is None else f"{value:{align}{len(header)}{precision}}")
    return " ".join(cells)


def parse_sampler(text: str) -> tuple[str, SamplerOverrides]:
    """`default` (the model's settings) or KEY=VALUE[,KEY=VALUE...] over them, each value as JSON."""
    pairs: dict[str, Any] = {}
    for item in [] if text == "default" else text.split(","):
        key, equals, value = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)  # null, 0, 0.9; a bare word (random) stays a string
        pairs[key.strip()] = value
    try:
        return text, SamplerOverrides.model_validate(pairs)
    except ValidationError as err:  # one line a field: `top_p: Input should be less than or equal to 1`
        problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise argparse.ArgumentTypeError("; ".join(problems)) from err


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda if present)",
    )
    parser.add_argument("--dtype", help="engine and server dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument(
        "--eager", action="store_true", help="no compiled forward on a GPU, in-process and in the server"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch here and in the server (default: all)")
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)} (default: both)")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory of `default`")
    parser.add_argument("--concurrency", help="requests at once, per level (default: 1,8,64,256; --stub: 1,8,64)")
    parser.add_argument("--rounds", type=int, help="waves of C requests per level (default: 2)")
    parser.add_argument("--reference-stories", type=int, help="stories through the reference loop (default: 3)")
    parser.add_argument("--stub", action="store_true", help="a zero-cost forward: the engine and sampler alone")
    parser.add_argument(
        "--cpu-backend",
        choices=CPU_BACKENDS,
        default="eager",
        help="how a CPU runs the model (default eager, as docs/benchmarks.md's engine tables; the server's "
        "default is auto: benchmarks/cpu_speed.py compares them)",
    )
    parser.add_argument(
        "--stub-vocab", help="--stub: vocabulary sizes of the zero logits, e.g. 64,8192 (default: the model's)"
    )
    parser.add_argument(
        "--sampler",
        action="append",
        type=parse_sampler,
        help="repeatable: `default` or KEY=VALUE,... over the model's settings, e.g. top_p=null or temperature=0 "
        "(default: default)",
    )
    parser.add_argument("--http", action="store_true", help="also every level through a real server over SSE")
    parser.add_argument("--quick", action="store_true", help="default model, C = 1 and 8, one round, one reference")
    parser.add_argument("--json", help="write the setup and every row to this file (rewritten after each row)")
    parser.add_argument("--table", help="at the end, write the rows as a Markdown table to this file")
    args = parser.parse_args(argv)
    grid = 1 if args.quick else 2 if args.stub else 0
    for key, defaults in GRIDS.items():
        if getattr(args, key) is None:
            setattr(args, key, defaults[grid])
    args.sampler = args.sampler or [parse_sampler("default")]
    if args.stub_vocab and not args.stub:
        parser.error("--stub-vocab sizes the stub's logits; it needs --stub")
    if args.stub and args.http:
        parser.error("--stub times the engine in-process; it does not combine with --http")
    if args.http and httpx is None:
        parser.error("--http needs httpx and httpx-sse (pip install -e '.[dev]')")
    if unknown := set(args.models.split(",")) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, printing each row as it completes; returns the report (also --json)."""
    args = parse_args(argv)
    started, cpu_started, device = time.perf_counter(), time.process_time(), torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = select_dtype(device, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "cpu": cpu_model(),
        "load_average": [load_average()],  # before, then after
        "models": {},
        "rows": [],
    }
    print(f"device: {name}; torch {torch.__version__}; engine dtype {report['dtype']}, reference float32", flush=True)
    print(" ".join(header for _, header, _ in TABLE), flush=True)

    def emit(row: dict[str, Any]) -> None:
        report["rows"].append(row)
        print(format_row(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="engine-throughput-") as tmp:
        for model in args.models.split(","):
            subject = load_subject(model, args.model_dir, device, dtype, Path(tmp))
            report["models"][model] = {
                "directory": shown_path(subject.directory) if model == "default" else "random init",
                "parameters": subject.ckpt.num_parameters,
                "vocab_size": subject.ckpt.model.config.vocab_size,
                "length": subject.length,
                "sampler": subject.sampler.model_dump(mode="json"),
            }
            report["models"][model] |= run_subject(subject, args, emit)
            del subject
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["wall_s"] = time.perf_counter() - started
    report["cpu_s"] = time.process_time() - cpu_started  # against wall_s: how much CPU this run got
    report["load_average"].append(load_average())
    print(f"total wall time {report['wall_s']:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.table:
        Path(args.table).write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
