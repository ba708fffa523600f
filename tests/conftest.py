"""Shared fixtures: tiny random masked LMs with real tokenizers, built offline in temp dirs."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig
from app.port_check import free_port as free_port  # re-exported: the tests import it from here

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.config import Settings
    from model_training.config import TrainConfig

pytest_plugins = [
    "tests.support.browser_fixtures",  # the page's fixtures, for every module that drives it
    "tests.support.service_fixtures",  # the app in process: anyio_backend, client
    "tests.support.judge_fixtures",  # a tiny autoregressive judge: tiny_judge_dir
    "tests.support.marker_summary",  # passed / failed / skipped per marker, at the end of each run
    "tests.support.shipped_vocab",  # a tiny model on the shipped WordPiece: typed text it lacks
]

DATA_DIR = Path(__file__).parent / "data"
CASED_VOCAB_DIR = DATA_DIR / "tokenizers" / "distilbert-base-cased"
STORIES_DIR = DATA_DIR / "tinystories"
TINY_SEQ_LEN = 48


def tiny_distilbert(vocab_size: int, max_positions: int = 64, seed: int = 0) -> DistilBertForMaskedLM:
    """A 2-layer, 32-dim DistilBERT with random weights: fast, deterministic, architecture-real."""
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=vocab_size,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=max_positions,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return DistilBertForMaskedLM(config).eval()


def tiny_train_config(output: Path, *flags: str) -> TrainConfig:
    """tiny-test.yaml on the stories sample, writing into `output`, plus extra flags."""
    from model_training.cli import parse_config  # the trainer's extras only where a test trains

    stories = ["--dataset", str(STORIES_DIR / "train.txt"), "--valid", str(STORIES_DIR / "valid.txt")]
    return parse_config(["--config", "tiny-test", "--output", str(output), *stories, *flags])


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and a shared 2-core CI makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Prepared CPU forwards (exported graphs) go to a temporary folder, never the user's cache; servers
    that tests start inherit it. Their settings run PyTorch's eager forward (`cpu_forward.logits_at`, which
    tests slow down or break) unless a test asks for another backend (tests/test_cpu_forward.py)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("STORYDIFF_CACHE_DIR", str(tmp_path_factory.mktemp("storydiff-cache")))
    patch.setenv("STORYDIFF_CPU_BACKEND", "eager")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def cased_tokenizer():
    """The real distilbert-base-cased WordPiece tokenizer (28,996 tokens)."""
    return AutoTokenizer.from_pretrained(str(CASED_VOCAB_DIR))


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, cased_tokenizer) -> Path:
    """A storydiff-format checkpoint dir: tiny random DistilBERT + tokenizer + diffusion_config."""
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    model = tiny_distilbert(len(cased_tokenizer))
    config = DiffusionConfig(seq_len=TINY_SEQ_LEN, trained_on="nothing: random weights for tests")
    save_checkpoint(directory, model, cased_tokenizer, config)
    return directory


@pytest.fixture(scope="session")
def reference_format_dir(tmp_path_factory, cased_tokenizer) -> Path:
    """A reference-format dir: plain save_pretrained of model and tokenizer, no diffusion_config."""
    directory = tmp_path_factory.mktemp("reference-format")
    tiny_distilbert(len(cased_tokenizer), max_positions=40, seed=1).save_pretrained(directory)
    cased_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def copy_of(tmp_path):
    """Copy a checkpoint dir into the test's tmp dir, to damage it safely."""

    def _copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target)
        return target

    return _copy


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    """The service for `settings` under `storydiff serve`'s uvicorn config, in a thread, once /ready is 200;
    yields its base URL and app, and stops it afterwards."""
    import httpx
    import uvicorn

    from app.api import create_app
    from app.serve_cli import uvicorn_config

    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    while httpx.get(f"{url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.05)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def slowed_forward(delay_s: float) -> Iterator[None]:
    """The engine's model forward made `delay_s` slower: requests stay in the batch long enough to watch."""
    from app.diffusion import cpu_forward

    original = cpu_forward.logits_at

    def slow_logits_at(model, x, query, attention_mask=None):  # type: ignore[no-untyped-def]
        time.sleep(delay_s)
        return original(model, x, query, attention_mask)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_forward, "logits_at", slow_logits_at)
        yield
