"""Request and response bodies of the HTTP API, validated at the edge and shown in the OpenAPI schema.

The sampler fields come from their one declaration (`app.diffusion.sampler_settings`), the engine's
counters from `StatsSnapshot`, failure reasons from the engine. `ModelState` is declared here, beside
the `Readiness` that reports it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, model_validator

from app.config import Settings
from app.diffusion.sampler_settings import MAX_SEED, MAX_STEPS, Preset, SamplerOverrides, SamplerSettings
from app.engine import StatsSnapshot
from app.engine.request import FailureReason
from app.engine.stats import FIELD_DOCS

MAX_LENGTH = 8192  # a static ceiling; the model's own max positions is checked per request
MAX_PROMPT_CHARS = 20_000
CANVAS_CONFLICTS = ("prompt", "ending", "segments", "length")
"""The fields an `edit` cannot go with: it is a whole story already."""

StreamFormat = Literal["json", "deltas", "text"]
"""How a stream's `step` events read: a StepEvent, a StepDelta, or the draft as plain text."""


class TextSegment(BaseModel):
    """Fixed text in a story with blanks: kept exactly, never masked."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class BlankSegment(BaseModel):
    """Positions for the model to write."""

    model_config = ConfigDict(extra="forbid", strict=True)
    blank: int = Field(ge=1, le=MAX_LENGTH, description="Tokens to write.")
    flexible: bool = Field(
        False,
        description="Last segment only: at most `blank` tokens, the story may end inside it where the model "
        "ends it; a fixed last blank ends the story right after it.",
    )


def _segment_kind(value: Any) -> str | None:
    """Which segment `value` is: an object with `text` or one with `blank`."""
    for kind, model in (("text", TextSegment), ("blank", BlankSegment)):
        if isinstance(value, model) or (isinstance(value, dict) and kind in value):
            return kind
    return None


Segment = Annotated[
    Annotated[TextSegment, Tag("text")] | Annotated[BlankSegment, Tag("blank")],
    Discriminator(
        _segment_kind,
        custom_error_type="segment",
        custom_error_message='A segment is {"text": "..."} or {"blank": N}',
    ),
]


class TokenSpan(BaseModel):
    """Token positions [start, end) of a story."""

    model_config = ConfigDict(extra="forbid", strict=True)
    start: int = Field(ge=0, le=MAX_LENGTH)
    end: int = Field(ge=1, le=MAX_LENGTH)


class Edit(BaseModel):
    """A finished story to rewrite in part: the spans are written anew, every other token stays."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tokens: list[int] = Field(min_length=1, max_length=MAX_LENGTH, description="A finished story's `tokens`.")
    spans: list[TokenSpan] = Field(min_length=1, max_length=MAX_LENGTH, description="What to rewrite.")


class GenerateRequest(SamplerOverrides):
    """A story to write: sampler fields left out take the checkpoint's defaults, shown by GET /info."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "steps": 64, "stream": True}]},
    )

    preset: Preset | None = Field(
        None,
        description="A named trade-off between speed and quality (GET /info lists each one's values): its "
        "fields go over the checkpoint's defaults, and the request's own sampler fields over it.",
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="The story's beginning; kept fixed while the rest is denoised.",
    )
    ending: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="The story's last words, kept fixed: the story ends with them at `length` (docs/infilling.md).",
    )
    segments: list[Segment] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description='The whole story as fixed texts and blanks, e.g. [{"text": "Once upon a time"}, '
        '{"blank": 60}, {"text": "The end."}]; the blanks\' sizes set the length.',
    )
    edit: Edit | None = Field(None, description="Rewrite spans of a finished story; nothing else changes.")
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
    stream_format: StreamFormat = Field(
        "json",
        description="What a stream's `step` events carry (streams only; `done` and `error` are JSON in every "
        "format). json: a StepEvent, the reveals and the whole draft; deltas: a StepDelta, the reveals alone, "
        "for a client that keeps its own draft; text: the draft alone, as plain text with each masked "
        "position as the placeholder, for a person watching `curl -N`.",
    )

    @model_validator(mode="after")
    def _one_canvas(self) -> GenerateRequest:
        """segments and edit each describe the whole story: they take no prompt, ending, length or each other."""
        for field, conflicts in (("segments", ("prompt", "ending", "length")), ("edit", CANVAS_CONFLICTS)):
            given = [name for name in conflicts if getattr(self, name) is not None]
            if getattr(self, field) is not None and given:
                raise ValueError(f"`{field}` is the whole story, so it takes no `{'`, `'.join(given)}`")
        return self


class GenerateResponse(BaseModel):
    """A finished story: the body of the JSON response and of the stream's `done` event."""

    text: str = Field(description="The story, clean: special tokens removed, cut where the model ended it.")
    seed: int
    steps: int
    length: int
    tokens: list[int] = Field(
        description="The final sequence's token ids, prompt included, without the run of PAD that fills the "
        "sequence after the story's end (so often shorter than `length`)."
    )
    elapsed_s: float = Field(description="Seconds from submission to the last step, queueing included.")
    forwards: int = Field(description="Model forwards this story took (steps that reveal nothing skip the model).")
    tokens_per_forward: float = Field(
        description="Tokens written (positions neither prompt nor pinned) per forward; 0 when none ran."
    )
    model: str
    request_id: str | None = Field(
        None, description="The id of the request that asked for it (its X-Request-ID), as in the server's logs."
    )


class Revealed(BaseModel):
    """A position a step unmasked."""

    pos: int
    id: int
    text: str = Field(description="The token as the tokenizer spells it (WordPiece: '##' continues a word).")
    p: float = Field(description="The model's probability of this token.")


class StepDelta(BaseModel):
    """The data of an SSE `step` event with `stream_format: deltas`: what one denoising step revealed."""

    step: int = Field(description="Steps done, 1-based.")
    steps: int
    t: float = Field(description="Diffusion time after this step: 1 - step / steps.")
    masked: int = Field(description="Positions still masked.")
    changed: list[Revealed] = Field(description="Everything revealed since the previous event sent.")
    full: bool = Field(
        False,
        description="Present (true) only on a resume's first event when `Last-Event-ID` was missing or unknown: "
        "`changed` and `remasked` are every position's latest change so far, a frame that replaces what the "
        "client had, not an addition to it.",
    )
    remasked: list[int] = Field(
        default_factory=list,
        description="Positions returned to the mask since the previous event sent (revision sampling), none of "
        "them in `changed`: each position appears with its latest change only.",
    )


class StepEvent(StepDelta):
    """The data of an SSE `step` event (`stream_format: json`): the reveals and the draft after the step."""

    text: str = Field(description="The draft, with each masked position shown as a placeholder.")


class ErrorEvent(BaseModel):
    """Why a request ended early: the data of an SSE `error` event (the stream closes after it), or the
    body of a failed JSON answer."""

    error: FailureReason
    detail: str
    draft: str | None = Field(
        None, description="The story as far as it got (masked positions as the placeholder), when it got anywhere."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


ModelState = Literal["loading", "ready", "draining", "failed", "stopped"]
"""Where the model is: what GET /ready says and `storydiff_model_state` labels."""


class Readiness(BaseModel):
    status: ModelState
    detail: str | None = Field(
        None, description='Why it is not ready: the error, or the warm-up\'s progress ("warming up: 5/12 shapes").'
    )


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
    timeout_s=(float, Field(description=Settings.model_fields["timeout_s"].description)),
    **_engine_fields(),
)


class Info(BaseModel):
    model: str
    device: str
    dtype: str
    forward: str = Field(description="How the model runs: eager, or compiled with CUDA graphs (--compile).")
    warm_up_s: float = Field(
        description="Seconds the warm-up took before /ready turned 200: every planned shape prepared, a first "
        "story, the forward's cost measured."
    )
    compiled_shapes: list[str] = Field(
        description="The planned `ROWSxWIDTH` shapes whose pass runs compiled, all prepared during the warm-up; "
        "empty for an eager forward, where every shape runs eagerly."
    )
    eager_shapes: dict[str, str] = Field(
        description="Planned shapes that run eagerly because compiling them failed, with the reason."
    )
    parameters: int
    max_length: int = Field(description="The longest `length` a request may ask for: the model's positions.")
    mask_placeholder: str
    defaults: SamplerInfo
    presets: dict[Preset, SamplerSettings] = Field(
        description="What a request that names each preset gets for every sampler field it leaves out."
    )
    engine: EngineInfo
    version: str
