"""The sampler settings, declared once: fields, types, bounds, defaults and their documentation.

Everything else derives from `SamplerSettings`:
- `SamplerOverrides` has the same fields, each optional: what a request body, a checkpoint's
  `diffusion_config.json` and the CLI may set. A field left out is not set at that layer; an explicit
  `null` means "off" (no top-k limit, no nucleus, no blocks) and is allowed only where off exists.
- One merge rule, `SamplerSettings.override`, applied layer by layer: the built-in defaults, then the
  checkpoint's, then a preset's (`PRESETS`: the checkpoint's, else `BUILTIN_PRESETS`), then the request's.
- One seed rule, `new_seed`.
The API's request schema and `/info`, the checkpoint file, `storydiff generate`'s flags and the
batched sampler all read these fields; none restates them.
"""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

MAX_STEPS = 4096
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1_000_000
MAX_BLOCK_LENGTH = 8192
MAX_ENTROPY_BUDGET = 1000.0
MAX_REVISION = 0.5
SEED_BITS = 32
"""Seeds chosen for a request that named none are below 2**SEED_BITS (any seed up to MAX_SEED is accepted)."""
MAX_SEED = 2**63 - 1


class Remasking(str, Enum):
    """Which masked positions a step reveals (the confidence-ranked rules are all but `random`)."""

    RANDOM = "random"
    LOW_CONFIDENCE = "low_confidence"
    THRESHOLD = "threshold"
    ENTROPY_BOUND = "entropy_bound"


class Endings(str, Enum):
    """Where a story's end comes from (`app.diffusion.story_length`)."""

    SAMPLED = "sampled"
    CALIBRATED = "calibrated"
    LENGTH_FIRST = "length_first"


def _shown(title: str, hint: str, off: str | None = None, step: float | None = None) -> dict[str, Any]:
    """How a form shows a field (the page builds its fields from these, in the OpenAPI schema): its
    label, a short hint, the placeholder of a field whose null means off, and a number input's step."""
    extra: dict[str, Any] = {"x-title": title, "x-hint": hint}  # pydantic drops `title` beside a $ref
    if off is not None:
        extra["x-off"] = off
    if step is not None:
        extra["x-step"] = step
    return {"title": title, "json_schema_extra": extra}


class SamplerSettings(BaseModel):
    """Complete settings for denoising one sequence: every field has a value."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    steps: int = Field(
        ge=1,
        le=MAX_STEPS,
        description="Denoising steps T (the checkpoint's; else one per token).",
        **_shown("Steps", "denoising steps"),
    )
    remasking: Remasking = Field(
        Remasking.RANDOM,
        strict=False,  # requests are strict, but JSON has no enum: the value's name is the way to say it
        **_shown("Remasking", "which tokens to keep"),
        description="random: every masked position stays masked with probability s/t (the reference sampler); "
        "low_confidence: keep the step's k most confident predictions (LLaDA); threshold: also every "
        "prediction at least `confidence_threshold` likely (Fast-dLLM); entropy_bound: also the most confident "
        "while their summed entropy stays within `entropy_budget` (EB-sampler). With the last two, `steps` is "
        "an upper bound: a step reveals at least the schedule's k, so no mask is left at the end.",
    )
    temperature: float = Field(
        0.0,
        ge=0.0,
        le=MAX_TEMPERATURE,
        description="0: always the most likely token; higher: more varied.",
        **_shown("Temperature", "0: most likely", step=0.05),
    )
    top_k: int | None = Field(
        None,
        ge=1,
        le=MAX_TOP_K,
        description="Sample among the k likeliest tokens; null: no limit.",
        **_shown("Top-k", "blank: no limit", off="no limit"),
    )
    top_p: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Sample from the nucleus of this probability mass; null: no limit.",
        **_shown("Top-p", "blank: no limit", off="no limit", step=0.05),
    )
    block_length: int | None = Field(
        None,
        ge=1,
        le=MAX_BLOCK_LENGTH,
        description="Confidence-ranked remasking only: reveal blocks of this many tokens, left to right "
        "(LLaDA's semi-autoregressive sampling); random ignores it. null: no blocks.",
        **_shown("Block length", "confidence rules: left to right", off="no blocks"),
    )
    confidence_threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="threshold remasking: reveal every prediction at least this likely.",
        **_shown("Threshold", "threshold: reveal all this sure", step=0.05),
    )
    entropy_budget: float = Field(
        1.0,
        ge=0.0,
        le=MAX_ENTROPY_BUDGET,
        description="entropy_bound remasking: the summed entropy (nats) of the predictions one step may reveal.",
        **_shown("Entropy budget", "entropy bound: nats a step", step=0.1),
    )
    guard_endings: bool = Field(
        False,
        description="Reveal an end token (PAD, SEP) only as part of a run of end tokens reaching the end of the "
        "sequence, so that a story ends only where the model is sure of everything after it (random remasking "
        "keeps a guarded end token masked for a later step; the ranked rules rank it last).",
        **_shown("End guard", "end tokens only where sure"),
    )

    endings: Endings = Field(
        Endings.SAMPLED,
        strict=False,
        **_shown("End rule", "where the story ends"),
        description="Where a story ends. sampled: end tokens (PAD, SEP) are drawn like any token, at the "
        "temperature and top-p (which sharpen PAD where it is the likeliest token: stories end early); "
        "calibrated: whether a revealed position ends is drawn at the model's own end probability (temperature "
        "1), the temperature and top-p choose only among words; length_first: the story's length is drawn at "
        "its first step from the model's end probabilities along the masked tail, written at once, and no end "
        "token is written elsewhere (the confidence-ranked rules then rank only words; without it they fill "
        "the tail with PAD first). A canvas that ends with fixed text keeps its own end.",
    )

    revision: float = Field(
        0.0,
        ge=0.0,
        le=MAX_REVISION,
        description="Revision sampling (ReMDM-cap, Wang et al. 2025): each step returns every word the sampler "
        "wrote to the mask with probability min(revision, s / (1 - t)), and reveals enough more that the "
        "schedule still ends with no mask (the last step never remasks). Typed, pinned and fixed text and "
        "end tokens are never remasked. 0: off, each token once written stays.",
        **_shown("Revision", "0: off; words may return to the mask", step=0.005),
    )

    def override(self, overrides: BaseModel) -> SamplerSettings:
        """These settings with every sampler field that `overrides` sets (an explicit null turns it off).

        `overrides` is a `SamplerOverrides` or a model built on it (a request body): its other fields
        are not sampler settings and are left alone. Each layer was validated against the same bounds.
        """
        update = overrides.model_dump(exclude_unset=True, include=set(SamplerSettings.model_fields))
        return self.model_copy(update=update)


NULLABLE_FIELDS = frozenset(
    name for name, info in SamplerSettings.model_fields.items() if not info.is_required() and info.default is None
)
"""Fields where null means "off": the ones whose complete value may be None."""


def derived_field(name: str, default: Any, description: str) -> Any:
    """Sampler field `name` with its type's bounds, for another declaration that sets it (e.g. the
    training config's sample settings): only the default and the description are its own."""
    return FieldInfo.merge_field_infos(SamplerSettings.model_fields[name], default=default, description=description)


def _optional(info: FieldInfo) -> tuple[Any, FieldInfo]:
    """The field as an override: same type, bounds and strictness, absent by default (no default shown)."""
    shown = dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}

    def without_default(schema: dict[str, Any]) -> None:
        schema.update(shown)
        schema.pop("default", None)  # absent is not null: the default comes from the layer below

    optional = FieldInfo.merge_field_infos(
        info, default=None, description=f"{info.description} Absent: the default.", json_schema_extra=without_default
    )
    return info.annotation, optional


class _OverridesBase(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


SamplerOverrides: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "SamplerOverrides",
    __base__=_OverridesBase,
    __doc__="Sampler settings that one layer (request, checkpoint, CLI) sets; the rest come from below.",
    **{name: _optional(info) for name, info in SamplerSettings.model_fields.items()},
)

Preset = Literal["quality", "balanced", "fast"]
"""Named trade-offs between forwards per story and quality: a layer between the checkpoint's defaults
and a request's own fields."""
PRESETS: tuple[Preset, ...] = get_args(Preset)

BUILTIN_PRESETS: dict[Preset, BaseModel] = {
    "quality": SamplerOverrides(),  # the checkpoint's own defaults
    "balanced": SamplerOverrides.model_validate({"remasking": "random", "steps": 64}),
    "fast": SamplerOverrides.model_validate({"remasking": "random", "steps": 24}),
}
"""Each preset's fields for a checkpoint whose `diffusion_config.json` names none; a checkpoint's own
`presets` replace them by name. Chosen on the shipped model's measured frontier (docs/fast-decoding.md):
on its 256-token stories, random remasking in 64 and 24 steps kept the judge's score, repetition and
story length of 256 steps, while the confidence rules either looped (in blocks) or ended stories early."""


def new_seed() -> int:
    """A fresh seed for a request that named none; returned to the caller so that it can replay."""
    return secrets.randbits(SEED_BITS)
