"""Service settings: environment variables `STORYDIFF_<NAME>`, overridden by `storydiff serve` flags.

Built by `create_app` callers and `storydiff serve`, never at import. Durations end in `_s`; their
names before that (`RENAMED`) still work as keywords, environment variables and flags, each use
logging one deprecation line.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from app.diffusion.cpu_backend import CPU_BACKEND_HELP, CpuBackend
from app.paths import DEFAULT_MODEL_DIR

log = logging.getLogger(__name__)

ENV_PREFIX = "STORYDIFF_"
RENAMED = {
    name: f"{name}_s"
    for name in (
        "timeout",
        "ping_interval",
        "shutdown_grace",
        "resume_grace",
        "retry_after",
        "body_timeout",
        "header_timeout",
        "keep_alive_timeout",
        "send_timeout",
        "exit_on_engine_failure_after",
    )
}
"""Duration settings by their old names, which still work (deprecated), and their names in seconds."""


def deprecated(old: str, new: str) -> None:
    """The one line a use of an old setting name logs."""
    log.warning("%s is deprecated: use %s (same value, in seconds)", old, new)


LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    """Everything the service needs to start: model, device, network and engine bounds."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    model: str = Field(str(DEFAULT_MODEL_DIR), description="Checkpoint directory or hub id.")
    device: str | None = Field(
        None,
        description="cpu, cuda or cuda:1; None: the fastest present (never mps: the sampler needs float64).",
    )
    dtype: str | None = Field(None, description="float32, bfloat16, float16; None: bf16 on GPUs, fp32 on CPU.")
    compile: bool | None = Field(
        None,
        description="Run the model over a fixed plan of batch shapes, each captured as a CUDA graph (on a CPU: "
        "compiled) during warm-up, before /ready; unset: on for CUDA devices, off on CPUs, where eager is faster.",
    )
    cpu_backend: CpuBackend = Field("auto", description=CPU_BACKEND_HELP)
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_batch: int = Field(32, ge=1, le=4096, description="Most sequences in one forward pass.")
    max_queue: int = Field(64, ge=0, le=100_000, description="Most requests waiting for a batch slot.")
    timeout_s: float = Field(300.0, gt=0, description="Seconds a request may take, queueing included.")
    ping_interval_s: float = Field(15.0, ge=0, description="Seconds between SSE keep-alive comments; 0: none.")
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight requests get to finish when the server stops. On SIGTERM or Ctrl-C it "
        "drains: /ready and new requests get 503 at once, and the streams still running after this long end "
        "with their draft in an error event; a second signal stops it at once.",
    )
    resume_grace_s: float = Field(
        15.0,
        ge=0,
        description="Seconds a stream whose client left keeps running, and a finished one keeps its outcome, for "
        "the client to resume it (GET /generate/{id}); 0: a client that leaves cancels its request at once.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429 when the queue is full.")
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
    body_timeout_s: float = Field(10.0, gt=0, description="Seconds a client may take to send a request body (408).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers, counted from connecting or from "
        "the end of the previous response; a slower connection is closed (slowloris).",
    )
    max_header_size: int = Field(
        16_384, ge=1024, description="Largest request line plus headers in bytes; a larger request gets 400."
    )
    keep_alive_timeout_s: int = Field(5, ge=1, description="Seconds an idle connection stays open between requests.")
    max_connections: int | None = Field(
        1000, ge=1, description="Most open connections; a request beyond them gets 503. None: no limit."
    )
    send_timeout_s: float | None = Field(
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
    admission_margin: float = Field(
        1.5,
        ge=1.0,
        description="With refuse_over_timeout, a request is admitted when its estimate times this margin fits "
        "within the timeout and, with it added, every admitted request's still fits within its own "
        "(docs/operations.md).",
    )
    client_max_requests: int | None = Field(
        8,
        ge=1,
        description="Most requests one client (its API key, or its address without keys) may have running, "
        "queued or awaiting resume (a dropped stream); one more gets 429. None: no limit.",
    )
    client_max_cost: int | None = Field(
        262_144,
        ge=1,
        description="Most steps x length one client may have running, queued or awaiting resume together "
        "(429 past it); a client over it loses its oldest dropped streams first. None: no limit.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [],
        description="Addresses (or networks, 10.0.0.0/8) of reverse proxies whose X-Forwarded-For names the "
        "client, separated by commas; none: a client is the address that connects.",
    )
    exit_on_engine_failure_after_s: float | None = Field(
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

    @field_validator("api_keys", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """`a,b` or a JSON list, as the environment variable gives it; a list stays a list."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        """Each an address or a network (ValueError names the bad one)."""
        for proxy in value:
            ipaddress.ip_network(proxy, strict=False)
        return value

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, values: Any) -> Any:
        """`Settings(timeout=5)` as `Settings(timeout_s=5)`, with a deprecation line; the new name wins."""
        if not isinstance(values, dict) or not RENAMED.keys() & values.keys():
            return values
        values = dict(values)
        for old, new in RENAMED.items():
            if old in values:
                deprecated(old, new)
                value = values.pop(old)
                values.setdefault(new, value)
        return values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, plus the old variable names below the new ones."""
        return init_settings, env_settings, OldEnvironmentNames(settings_cls), dotenv_settings, file_secret_settings


class OldEnvironmentNames(PydanticBaseSettingsSource):
    """`STORYDIFF_TIMEOUT` and the other old names of `RENAMED`, read as their new fields (deprecated)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the old names itself

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        environment = {name.upper(): value for name, value in os.environ.items()}
        for old, new in RENAMED.items():
            value = environment.get(f"{ENV_PREFIX}{old.upper()}")
            if value is not None:
                deprecated(f"{ENV_PREFIX}{old.upper()}", f"{ENV_PREFIX}{new.upper()}")
                found[new] = value
        return found


def _old_name(new: str) -> property:
    return property(lambda settings: getattr(settings, new), doc=f"Deprecated: `{new}`.")


for _old, _new in RENAMED.items():  # `settings.timeout` reads `settings.timeout_s`
    setattr(Settings, _old, _old_name(_new))
