"""Request and response bodies of the HTTP API, validated at the edge and shown in the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.diffusion.sampler_settings import Remasking

MAX_STEPS = 4096
MAX_LENGTH = 8192  # a static ceiling; the model's own max positions is checked per request
MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    """A story to write. Absent (or null) fields take the checkpoint's defaults, shown by GET /info."""

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
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Denoising steps.")
    remasking: Remasking | None = Field(
        None,
        strict=False,
        description="random: reveal each masked position with the schedule's probability; "
        "low_confidence: reveal the most confident predictions first.",
    )
    temperature: float | None = Field(None, ge=0.0, le=100.0, description="0: always the most likely token.")
    top_k: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Sample among the k most likely tokens. Absent: the checkpoint's default; null: no limit.",
    )
    top_p: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling mass. Absent: the checkpoint's default; null: no limit.",
    )
    block_length: int | None = Field(
        None,
        ge=1,
        le=MAX_LENGTH,
        description="low_confidence only: reveal the story in blocks of this many tokens, left to right "
        "(LLaDA's semi-autoregressive sampling); random ignores it. Absent: the checkpoint's default; "
        "null: no blocks.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Same seed and settings, same story; chosen and returned when absent.",
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
    """The data of an SSE `error` event; the stream closes after it."""

    error: Literal["timeout", "shutdown", "internal"]
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "stopped"]
    detail: str | None = None


class SamplerInfo(BaseModel):
    length: int
    steps: int
    remasking: Remasking
    temperature: float
    top_k: int | None
    top_p: float | None
    block_length: int | None


class EngineInfo(BaseModel):
    max_batch: int
    max_queue: int
    timeout_s: float
    active: int
    waiting: int
    iterations: int
    forward_calls: int
    batch_sizes: dict[int, int] = Field(description="Sequences per forward pass -> number of passes.")
    submitted: int
    completed: int
    cancelled: int
    timed_out: int
    failed: int
    rejected: int


class Info(BaseModel):
    model: str
    device: str
    dtype: str
    parameters: int
    max_length: int = Field(description="The longest `length` a request may ask for: the model's positions.")
    mask_placeholder: str
    defaults: SamplerInfo
    engine: EngineInfo
    version: str
