"""Service settings: environment variables `STORYDIFF_<NAME>`, overridden by `storydiff serve` flags.

Built by `create_app` callers and `storydiff serve`, never at import.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.diffusion.cpu_backend import CPU_BACKEND_HELP, CpuBackend
from app.paths import DEFAULT_MODEL_DIR

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    """Everything the service needs to start: model, device, network and engine bounds."""

    model_config = SettingsConfigDict(env_prefix="STORYDIFF_", extra="forbid")

    model: str = Field(str(DEFAULT_MODEL_DIR), description="Checkpoint directory or hub id.")
    device: str | None = Field(
        None,
        description="cpu, cuda or cuda:1; None: the fastest present (never mps: the sampler needs float64).",
    )
    dtype: str | None = Field(None, description="float32, bfloat16, float16; None: bf16 on GPUs, fp32 on CPU.")
    compile: bool | None = Field(
        None,
        description="Run the model with static shapes and CUDA graphs, compiled during warm-up (slower to "
        "start, much faster per step on a GPU); unset: on for CUDA devices, off on CPUs, where eager is faster.",
    )
    cpu_backend: CpuBackend = Field("auto", description=CPU_BACKEND_HELP)
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_batch: int = Field(32, ge=1, le=4096, description="Most sequences in one forward pass.")
    max_queue: int = Field(64, ge=0, le=100_000, description="Most requests waiting for a batch slot.")
    timeout: float = Field(300.0, gt=0, description="Seconds a request may take, queueing included.")
    ping_interval: float = Field(15.0, ge=0, description="Seconds between SSE keep-alive comments; 0: none.")
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight requests get to finish when the server stops. On SIGTERM or Ctrl-C it "
        "drains: /ready and new requests get 503 at once, and the streams still running after this long end "
        "with their draft in an error event; a second signal stops it at once.",
    )
    resume_grace: float = Field(
        15.0,
        ge=0,
        description="Seconds a stream whose client left keeps running, and a finished one keeps its outcome, for "
        "the client to resume it (GET /generate/{id}); 0: a client that leaves cancels its request at once.",
    )
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with 429 when the queue is full.")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for torch ops; None: torch's default (all cores)."
    )
    log_level: LogLevel = Field("info", description="How much uvicorn and storydiff log.")
    log_format: LogFormat = Field(
        "text",
        description="text: readable lines; json: one JSON object a line (time, level, logger, request_id, "
        "message and the event's fields), for a log collector.",
    )

    # Limits and security (docs/operations.md).
    max_body_size: int = Field(
        65_536, ge=1, description="Largest request body in bytes; a larger one gets 413 before it is read."
    )
    body_timeout: float = Field(10.0, gt=0, description="Seconds a client may take to send a request body (408).")
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers, counted from connecting or from "
        "the end of the previous response; a slower connection is closed (slowloris).",
    )
    max_header_size: int = Field(
        16_384, ge=1024, description="Largest request line plus headers in bytes; a larger request gets 400."
    )
    keep_alive_timeout: int = Field(5, ge=1, description="Seconds an idle connection stays open between requests.")
    max_connections: int | None = Field(
        1000, ge=1, description="Most open connections; a request beyond them gets 503. None: no limit."
    )
    send_timeout: float | None = Field(
        30.0,
        gt=0,
        description="Seconds one SSE event may wait for a client that stopped reading; then it is "
        "dropped. None: wait forever.",
    )
    max_request_cost: int | None = Field(
        262_144, ge=1, description="Most steps x length one request may ask for (422 above). None: no cap."
    )
    refuse_over_timeout: bool = Field(
        True,
        description="Refuse (429) a request that, by the forward cost measured at startup and the requests "
        "admitted now, cannot finish within the timeout, rather than time it out later.",
    )
    exit_on_engine_failure_after: float | None = Field(
        10.0,
        ge=0,
        description="Seconds after the engine thread dies before the process exits with status 1, for a "
        "supervisor to restart it (/ready says failed meanwhile). 0 or None: keep running.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],
        description="Bearer keys that /generate and /info require, separated by commas; none: no key needed. "
        "Prefer STORYDIFF_API_KEYS to the flag, which other users can see in the process list.",
    )
    metrics_need_key: bool = Field(True, description="With api_keys set, /metrics requires a key too.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Origins whose pages may call the API (CORS), separated by commas; none: same origin only."
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """`a,b` or a JSON list, as the environment variable gives it; a list stays a list."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
