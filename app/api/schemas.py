"""Request and response bodies of the HTTP API, validated at the edge and shown in the OpenAPI schema.

The sampler fields come from their one declaration (`app.diffusion.sampler_settings`), the engine's
counters from `StatsSnapshot`, failure reasons and model states from the engine and the runtime.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.api.runtime import ModelState
from app.config import Settings
from app.diffusion.sampler_settings import MAX_SEED, MAX_STEPS, SamplerOverrides, SamplerSettings
from app.engine import StatsSnapshot
from app.engine.request import FailureReason
from app.engine.stats import FIELD_DOCS

MAX_LENGTH = 8192  # a static ceiling; the model's own max positions is checked per request
MAX_PROMPT_CHARS = 20_000


class GenerateRequest(SamplerOverrides):
    """A story to write: sampler fields left out take the checkpoint's defaults, shown by GET /info."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "steps": 64, "stream": True}]},
    )

    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="The story's beginning; kept fixed while the rest is denoised.",
    )
    length: int | None = Field(
        None,
        ge=1,
        le=MAX_LENGTH,
        description="Sequence length in tokens, prompt included; at most the model's max positions.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Same seed and settings, same story; chosen (below 2**32) and returned when absent.",
    )
    stream: bool | None = Field(
        None,
        description="true: a text/event-stream of every denoising step; absent: decided by the Accept header.",
    )
    stream_every: int = Field(
        1,
        ge=1,
        le=MAX_STEPS,
        description="Send every k-th step (and always the last); skipped steps' reveals are carried forward.",
    )


class GenerateResponse(BaseModel):
    """A finished story: the body of the JSON response and of the stream's `done` event."""

    text: str = Field(description="The story, clean: special tokens removed, cut where the model ended it.")
    seed: int
    steps: int
    length: int
    tokens: list[int] = Field(description="All token ids of the final sequence, prompt included.")
    elapsed_s: float = Field(description="Seconds from submission to the last step, queueing included.")
    model: str


class Revealed(BaseModel):
    """A position a step unmasked."""

    pos: int
    id: int
    text: str = Field(description="The token as the tokenizer spells it (WordPiece: '##' continues a word).")
    p: float = Field(description="The model's probability of this token.")


class StepEvent(BaseModel):
    """The data of an SSE `step` event: the draft after one denoising step."""

    step: int = Field(description="Steps done, 1-based.")
    steps: int
    t: float = Field(description="Diffusion time after this step: 1 - step / steps.")
    masked: int = Field(description="Positions still masked.")
    changed: list[Revealed] = Field(description="Everything revealed since the previous event sent.")
    text: str = Field(description="The draft, with each masked position shown as a placeholder.")


class ErrorEvent(BaseModel):
    """Why a request ended early: the data of an SSE `error` event (the stream closes after it), or the
    body of a failed JSON answer."""

    error: FailureReason
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: ModelState
    detail: str | None = None


class SamplerInfo(SamplerSettings):
    """What a request gets for each field it leaves out."""

    length: int


def _engine_fields() -> dict[str, Any]:
    """`StatsSnapshot`'s fields as pydantic fields, with their documentation."""
    hints = get_type_hints(StatsSnapshot)
    return {f.name: (hints[f.name], Field(description=FIELD_DOCS[f.name])) for f in fields(StatsSnapshot)}


EngineInfo: type[BaseModel] = create_model(
    "EngineInfo",
    __doc__="The engine's limits and its counters at the time of the request.",
    max_batch=(int, Field(description=Settings.model_fields["max_batch"].description)),
    max_queue=(int, Field(description=Settings.model_fields["max_queue"].description)),
    timeout_s=(float, Field(description=Settings.model_fields["timeout"].description)),
    **_engine_fields(),
)


class Info(BaseModel):
    model: str
    device: str
    dtype: str
    forward: str = Field(description="How the model runs: eager, or compiled with CUDA graphs (--compile).")
    parameters: int
    max_length: int = Field(description="The longest `length` a request may ask for: the model's positions.")
    mask_placeholder: str
    defaults: SamplerInfo
    engine: EngineInfo
    version: str
