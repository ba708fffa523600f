"""A request as an engine job (the checkpoint's defaults under the request's fields), and the engine's
updates as response bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.api.schemas import GenerateRequest, GenerateResponse, Revealed, SamplerInfo, StepEvent
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import new_seed
from app.diffusion.text import decode_story, prompt_ids, render_draft
from app.engine import Finished, GenerationSpec, StepUpdate


@dataclass(frozen=True)
class Job:
    """A validated request, ready for the engine, and what the response must echo."""

    spec: GenerationSpec
    model: str


def sampler_defaults(checkpoint: Checkpoint) -> SamplerInfo:
    """What a request gets for every field it leaves out."""
    config = checkpoint.config
    return SamplerInfo(length=config.seq_len, **dict(config.sampler_settings))


def _invalid(field: str, message: str, value: Any, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's own format, for checks that need the loaded checkpoint."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": value}])


def build_job(body: GenerateRequest, checkpoint: Checkpoint, stream_every: int | None) -> Job:
    """The engine spec for `body`; raises RequestValidationError (422) for what the model cannot do."""
    length = checkpoint.config.seq_len if body.length is None else body.length
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
    sampler = checkpoint.config.sampler_settings.override(body)
    seed = new_seed() if body.seed is None else body.seed
    return Job(GenerationSpec(tuple(prefix), length, sampler, seed, stream_every), checkpoint.source)


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
