"""CPU forwards against PyTorch fp32 eager, in one process on the same seeds: speed, memory and story quality.

For each preset (the checkpoint's default and `fast`) and each `--cpu-backend` (`cpu_forward.select_forward`,
the function the server and `storydiff generate` use):
- one at a time: `--stories` unprompted stories, one `sample` call each, the backends interleaved story by
  story (eager, onnx, onnx-int8, openvino, eager, ...) so that a change in the machine's load falls on all alike;
  `s/story` is their mean, `x eager` eager's mean over the backend's;
- 8 concurrent: `--concurrent` stories submitted at once to the step-level engine (`Engine`) with that
  forward, `stories/s` over the wave's wall time, and its ratio to eager's wave;
- quality of the one-at-a-time stories: `AR ppl` (generation perplexity under the independent
  autoregressive judge, docs/judge.md) and `H` (word entropy per story), each also as a change against
  eager's stories of the same seeds; `dist2`, `rep4`, `words`; `same` = seeds whose tokens equal eager's;
- `RSS MiB`: the process's resident memory after the backend's runs (the peak of the whole process is
  printed at the end; for one backend's own peak, run it alone with `--backends`).
`--kv-refresh 4,8` adds a row per K for key/value reuse (`kv_reuse.ReusingForward`, `storydiff generate
--kv-refresh K`: PyTorch's layers, a full pass every K forwards, a fresh one per story), named `kv-K`; one
at a time only, since the engine does not run it (its `C stories/s` is `-`).
`--startup` also times `storydiff serve` to /ready per backend: a first start with an empty cache (the
graph is exported then) and a later start, against eager.

    python benchmarks/cpu_speed.py --threads 2 --kv-refresh 4,8        # the table in docs/benchmarks.md
    python benchmarks/cpu_speed.py --threads 2 --quick --judge none    # a minute: two stories a backend
    python benchmarks/cpu_speed.py --threads 2 --startup --stories 0   # startup to /ready only
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.diffusion.cpu_backend import CPU_BACKENDS
from app.diffusion.cpu_forward import QueriedForward, select_forward
from app.diffusion.generation import sample
from app.diffusion.kv_reuse import ReusingForward
from app.diffusion.sampler_settings import SamplerOverrides, SamplerSettings
from app.diffusion.text import decode_story, end_token_ids
from app.engine import Engine, Finished, GenerationSpec, StepUpdate
from app.paths import DEFAULT_MODEL_DIR, model_name
from model_training.judge import DEFAULT_VALID, Judge, ensure_judge, story_statistics, surprise


def story(ckpt: Checkpoint, forward: QueriedForward, settings: SamplerSettings, seed: int) -> list[int]:
    """One unprompted story's tokens, written alone."""
    *_, (_, last) = sample(ckpt.model, ckpt.tokenizer, settings, [seed], ckpt.config.seq_len, forward=forward)
    return [int(t) for t in last.x[0]]


ForwardMaker = Callable[[], QueriedForward]
"""A backend: the forward for the next story (the same one for a stateless forward, a new one for reuse)."""


def forward_makers(ckpt: Checkpoint, backends: Sequence[str], refreshes: Sequence[int]) -> dict[str, ForwardMaker]:
    """Every backend by name, eager first: `select_forward`'s (prepared now) and `kv-K` per refresh K."""
    makers: dict[str, ForwardMaker] = {}
    for name in backends:
        forward = select_forward(ckpt.model, name)  # type: ignore[arg-type]
        makers[name] = lambda forward=forward: forward
    for refresh in refreshes:
        makers[f"kv-{refresh}"] = lambda refresh=refresh: ReusingForward(ckpt.model, ckpt.mask_id, refresh)
    return makers


def one_at_a_time(
    ckpt: Checkpoint, forwards: dict[str, ForwardMaker], settings: SamplerSettings, seeds: Sequence[int]
) -> dict[str, tuple[list[list[int]], list[float]]]:
    """Per backend, each seed's story and seconds, the backends taking turns story by story."""
    out: dict[str, tuple[list[list[int]], list[float]]] = {name: ([], []) for name in forwards}
    for seed in seeds:
        for name, make in forwards.items():
            started = time.perf_counter()
            ids = story(ckpt, make(), settings, seed)
            out[name][1].append(time.perf_counter() - started)
            out[name][0].append(ids)
    return out


def concurrent(ckpt: Checkpoint, forward: QueriedForward, settings: SamplerSettings, seeds: Sequence[int]) -> float:
    """Stories per second with every seed's story submitted at once to the engine over `forward`."""
    pad = ckpt.tokenizer.pad_token_id
    engine = Engine(
        forward,
        mask_id=ckpt.mask_id,
        pad_id=ckpt.mask_id if pad is None else int(pad),
        max_batch=len(seeds),
        typical_length=ckpt.config.seq_len,
        end_ids=sorted(end_token_ids(ckpt.tokenizer)),
    )
    outcomes: list[Any] = []
    engine.start()
    started = time.perf_counter()
    try:
        for seed in seeds:
            engine.submit(GenerationSpec((), ckpt.config.seq_len, settings, seed), _keep_outcome(outcomes), 3600.0)
        engine.stop(grace_s=3600.0)
    finally:
        engine.stop()
    wall = time.perf_counter() - started
    if len(outcomes) != len(seeds) or not all(isinstance(o, Finished) for o in outcomes):
        raise RuntimeError(f"the engine did not finish every story: {outcomes}")
    return len(seeds) / wall


def _keep_outcome(outcomes: list[Any]) -> Any:
    def publish(update: Any) -> None:
        if not isinstance(update, StepUpdate):
            outcomes.append(update)

    return publish


def quality(texts: list[str], judge: Judge | None) -> dict[str, Any]:
    """The judge's perplexity and the word statistics of `texts`."""
    return {"ar_ppl": surprise(judge, texts).perplexity if judge is not None else None, **story_statistics(texts)}


def rss_mib() -> tuple[float, float]:
    """(resident now, peak) MiB of this process (Linux; elsewhere the peak only)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024, peak
    except (OSError, StopIteration):
        return float("nan"), peak


def preset_rows(
    ckpt: Checkpoint, forwards: dict[str, ForwardMaker], preset: str, args: argparse.Namespace, judge: Judge | None
) -> list[dict[str, Any]]:
    """Every backend's row at one preset."""
    settings = ckpt.config.settings_for(None if preset == "default" else preset)
    seeds = [args.seed + i for i in range(args.stories)]
    alone = one_at_a_time(ckpt, forwards, settings, seeds)
    rows = []
    for name, make in forwards.items():
        ids, seconds = alone[name]
        texts = [decode_story(row, ckpt.tokenizer) for row in ids]
        forward = make()
        in_engine = not isinstance(forward, ReusingForward)  # the engine's batch changes rows every step
        wave = [args.seed + i for i in range(args.concurrent)]
        rate = concurrent(ckpt, forward, settings, wave) if in_engine else None
        row = {"preset": preset, "backend": name, "forward": forward.name, "s_per_story": statistics.fmean(seconds)}
        row |= {"stories_per_s": rate, "same": sum(a == b for a, b in zip(ids, alone["eager"][0], strict=True))}
        row |= quality(texts, judge) | {"rss_mib": rss_mib()[0], "load": os.getloadavg()[0]}
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["s_per_story"] / row["s_per_story"]
        row["concurrent_speedup"] = _ratio(row["stories_per_s"], base["stories_per_s"])
        row["ppl_change"] = _change(row["ar_ppl"], base["ar_ppl"])
        row["entropy_change"] = _change(row["word_entropy"], base["word_entropy"])
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _change(value: float | None, base: float | None) -> float | None:
    ratio = _ratio(value, base)
    return None if ratio is None else ratio - 1


HEADER = (
    f"{'preset':<8}{'backend':<11}{'s/story':>8}{'x eager':>8}{'C stories/s':>12}{'x eager':>8}{'AR ppl':>8}"
    f"{'dppl':>7}{'H':>6}{'dH':>7}{'dist2':>7}{'rep4':>7}{'words':>6}{'same':>7}{'RSS MiB':>8}"
)


def line(row: dict[str, Any], stories: int) -> str:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    return (
        f"{row['preset']:<8}{row['backend']:<11}{row['s_per_story']:>8.2f}{row['speedup']:>7.2f}x"
        f"{num(row['stories_per_s'], '.3f'):>12}{times(row['concurrent_speedup']):>8}"
        f"{num(row['ar_ppl'], '.2f'):>8}"
        f"{num(row['ppl_change'], '+.1%'):>7}{row['word_entropy']:>6.2f}{num(row['entropy_change'], '+.1%'):>7}"
        f"{row['distinct2']:>7.3f}{row['rep4']:>7.3f}{row['words']:>6.0f}{row['same']:>4}/{stories:<2}"
        f"{row['rss_mib']:>8.0f}"
    )


def startup_s(model: str, backend: str, threads: int, cache: Path) -> float:
    """Seconds from starting `storydiff serve` to /ready answering 200."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"STORYDIFF_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "app", "--model", model, "--cpu-backend", backend, "--port", str(port)]
    command += ["--threads", str(threads), "--log-level", "warning"]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"storydiff serve --cpu-backend {backend} exited with {server.returncode}")
    finally:
        server.terminate()
        server.wait(30)


def startup_lines(args: argparse.Namespace, backends: Sequence[str]) -> list[str]:
    """Seconds to /ready per backend: first start (empty cache) and a later one."""
    out = [f"{'startup to /ready':<20}{'first start s':>14}{'later start s':>14}"]
    with tempfile.TemporaryDirectory() as cache:
        for backend in backends:
            first = startup_s(args.model, backend, args.threads, Path(cache))
            later = startup_s(args.model, backend, args.threads, Path(cache))
            out.append(f"{backend:<20}{first:>14.1f}{later:>14.1f}")
    return out


def load_judge(spec: str) -> Judge | None:
    """`auto`: the default AR judge from its cache (trained first when missing); `none`: none; else a folder."""
    if spec == "none":
        return None
    return ensure_judge(valid=DEFAULT_VALID) if spec == "auto" else Judge.load(Path(spec))


def cpu_name() -> str:
    """The CPU's model name, as lscpu shows it (Linux), else the machine type."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), os.uname().machine)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--stories", type=int, default=32, help="stories one at a time per backend and preset")
    parser.add_argument("--concurrent", type=int, default=8, help="stories submitted at once to the engine")
    parser.add_argument(
        "--backends", default="eager,onnx,onnx-int8,openvino", help="comma-separated; eager always first"
    )
    parser.add_argument("--presets", default="default,fast", help="comma-separated: default and preset names")
    parser.add_argument(
        "--kv-refresh",
        default="",
        help="comma-separated K: also key/value reuse with a full pass every K forwards (kv-K rows; default none)",
    )
    parser.add_argument("--judge", default="auto", help="auto (the cached AR judge), none, or a judge folder")
    parser.add_argument("--seed", type=int, default=0, help="first seed; story i uses seed + i")
    parser.add_argument("--quick", action="store_true", help="2 stories one at a time and 2 concurrent")
    parser.add_argument("--startup", action="store_true", help="also time `storydiff serve` to /ready")
    args = parser.parse_args(argv)
    if args.quick:
        args.stories, args.concurrent = 2, 2
    backends = [b for b in args.backends.split(",") if b != "eager"]
    unknown = [b for b in backends if b not in CPU_BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(CPU_BACKENDS)})")
    args.backends = ["eager", *backends]
    try:
        args.kv_refresh = [int(k) for k in args.kv_refresh.split(",") if k]
    except ValueError:
        parser.error(f"--kv-refresh: {args.kv_refresh!r} is not comma-separated whole numbers")
    if any(k < 1 for k in args.kv_refresh):
        parser.error("--kv-refresh: every K must be 1 or more (1: a full pass every forward)")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model, "cpu", torch.float32)
    judge = load_judge(args.judge)
    load_before = os.getloadavg()
    forwards = forward_makers(ckpt, args.backends, args.kv_refresh)
    for make in forwards.values():  # lazy initialisation (threads, allocations) before any clock starts
        story(ckpt, make(), ckpt.config.settings_for("fast").override(SamplerOverrides(steps=2)), args.seed)
    print(
        f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; {model_name(ckpt.source)}; "
        f"{args.stories} stories one at a time, {args.concurrent} concurrent; load average {load_before[0]:.2f}",
        flush=True,
    )
    print(HEADER)
    rows = []
    for preset in args.presets.split(","):
        for row in preset_rows(ckpt, forwards, preset, args, judge) if args.stories else []:
            print(line(row, args.stories), flush=True)
            rows.append(row)
    peak = rss_mib()[1]
    print(f"load average {os.getloadavg()[0]:.2f} at the end; peak RSS of the process {peak:.0f} MiB")
    if args.startup:
        print("\n".join(startup_lines(args, args.backends)))
    return rows


if __name__ == "__main__":
    main()
