"""Between the HTTP schemas and the engine: requests with the checkpoint's defaults, results as text."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.api.schemas import GenerateRequest, GenerateResponse, Revealed, SamplerInfo, StepEvent
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampling import SamplerConfig
from app.diffusion.text import decode_story, prompt_ids, render_draft
from app.engine import Finished, GenerationSpec, StepUpdate


@dataclass(frozen=True)
class Job:
    """A validated request, ready for the engine, and what the response must echo."""

    spec: GenerationSpec
    model: str


def sampler_defaults(checkpoint: Checkpoint) -> SamplerInfo:
    """The settings a request gets for every field it leaves out."""
    config = checkpoint.config
    sampler = config.sampler_settings
    return SamplerInfo(
        length=config.seq_len,
        steps=config.sampler_settings.steps,
        remasking=sampler.remasking,
        temperature=sampler.temperature,
        top_k=sampler.top_k,
        top_p=sampler.top_p,
        block_length=sampler.block_length,
    )


def _invalid(field: str, message: str, value: Any, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's own format, for checks that need the loaded checkpoint."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": value}])


def _default(body: GenerateRequest, field: str, default: Any) -> Any:
    """The request's value; the default when absent, or when null for fields where null means nothing."""
    value = getattr(body, field)
    if field in ("top_k", "top_p", "block_length") and field in body.model_fields_set:
        return value  # explicit null: no limit, no blocks
    return default if value is None else value


def build_job(body: GenerateRequest, checkpoint: Checkpoint, stream_every: int | None) -> Job:
    """The engine spec for `body`; raises RequestValidationError (422) for what the model cannot do."""
    defaults = sampler_defaults(checkpoint)
    length = _default(body, "length", defaults.length)
    if length > checkpoint.max_positions:
        raise _invalid(
            "length",
            f"Input should be less than or equal to {checkpoint.max_positions}, the model's maximum positions",
            length,
            "less_than_equal",
        )
    prefix = prompt_ids(checkpoint.tokenizer, body.prompt)
    if len(prefix) > length:
        raise _invalid(
            "prompt",
            f"The prompt takes {len(prefix)} tokens, more than the length {length}; "
            "shorten it or ask for a longer length",
            body.prompt,
        )
    sampler = SamplerConfig(
        steps=_default(body, "steps", defaults.steps),
        remasking=_default(body, "remasking", defaults.remasking),
        temperature=_default(body, "temperature", defaults.temperature),
        top_k=_default(body, "top_k", defaults.top_k),
        top_p=_default(body, "top_p", defaults.top_p),
        block_length=_default(body, "block_length", defaults.block_length),
    )
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
    spec = GenerationSpec(tuple(prefix), length, sampler, seed, stream_every)
    return Job(spec, checkpoint.source)


def step_event(update: StepUpdate, checkpoint: Checkpoint) -> StepEvent:
    """The `step` event for an update: the draft with visible masks and the tokens revealed."""
    tokenizer = checkpoint.tokenizer
    pieces = tokenizer.convert_ids_to_tokens([reveal.id for reveal in update.changed])
    return StepEvent(
        step=update.step,
        steps=update.num_steps,
        t=update.t,
        masked=update.ids.count(checkpoint.mask_id),
        changed=[
            Revealed(pos=reveal.pos, id=reveal.id, text=piece, p=reveal.p)
            for reveal, piece in zip(update.changed, pieces, strict=True)
        ],
        text=render_draft(update.ids, tokenizer),
    )


def result(job: Job, finished: Finished, checkpoint: Checkpoint) -> GenerateResponse:
    """The finished story: the JSON response and the `done` event."""
    return GenerateResponse(
        text=decode_story(finished.ids, checkpoint.tokenizer),
        seed=job.spec.seed,
        steps=finished.num_steps,
        length=job.spec.length,
        tokens=list(finished.ids),
        elapsed_s=round(finished.elapsed_s, 4),
        model=job.model,
    )
