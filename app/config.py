"""Service settings: environment variables `STORYDIFF_<NAME>`, overridden by `storydiff serve` flags.

Built by `create_app` callers and `storydiff serve`, never at import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.paths import DEFAULT_MODEL_DIR

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the service needs to start: model, device, network and engine bounds."""

    model_config = SettingsConfigDict(env_prefix="STORYDIFF_", extra="forbid")

    model: str = Field(str(DEFAULT_MODEL_DIR), description="Checkpoint directory or hub id.")
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; None: the fastest present.")
    dtype: str | None = Field(None, description="float32, bfloat16, float16; None: bf16 on GPUs, fp32 on CPU.")
    compile: bool | None = Field(
        None,
        description="Run the model with static shapes and CUDA graphs, compiled during warm-up (slower to "
        "start, much faster per step on a GPU); unset: on for CUDA devices, off on CPUs, where eager is faster.",
    )
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_batch: int = Field(32, ge=1, le=4096, description="Most sequences in one forward pass.")
    max_queue: int = Field(64, ge=0, le=100_000, description="Most requests waiting for a batch slot.")
    timeout: float = Field(300.0, gt=0, description="Seconds a request may take, queueing included.")
    ping_interval: float = Field(15.0, ge=0, description="Seconds between SSE keep-alive comments; 0: none.")
    shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds in-flight requests get to finish when the server stops."
    )
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with 429 when the queue is full.")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for torch ops; None: torch's default (all cores)."
    )
    log_level: LogLevel = Field("info", description="How much uvicorn and storydiff log.")
