"""A request as an engine job (the checkpoint's defaults under the request's fields), and the engine's
updates as response bodies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.api.infill import InvalidCanvas, request_canvas
from app.api.schemas import (
    ErrorEvent,
    GenerateRequest,
    GenerateResponse,
    Revealed,
    SamplerInfo,
    StepDelta,
    StepEvent,
    StreamFormat,
)
from app.api.security import model_name
from app.diffusion.canvas import Canvas
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import PRESETS, Preset, SamplerSettings, new_seed
from app.diffusion.text import FixedSpan, prompt_ids, prompt_span, story_text, without_pad_tail
from app.engine import Failed, Finished, GenerationSpec, StepUpdate
from app.logging_setup import current_request_id


@dataclass(frozen=True)
class Job:
    """A validated request, ready for the engine, and what the response must echo."""

    spec: GenerationSpec
    model: str
    request_id: str | None = field(default_factory=current_request_id)  # the HTTP request that asked for it
    stream_format: StreamFormat = "json"  # what its stream's `step` events carry
    canvas: Canvas | None = None  # the text fixed around its blanks, if it asked for any
    typed: tuple[FixedSpan, ...] = ()  # where a plain request's prompt lies, to show it as typed

    def text(self, ids: Sequence[int], checkpoint: Checkpoint) -> str:
        """The story (or draft) in `ids`: typed text as typed, written text decoded, masks as placeholders."""
        if self.canvas is not None:
            return self.canvas.story_text(ids, checkpoint.tokenizer)
        return story_text(ids, checkpoint.tokenizer, self.typed)


def sampler_defaults(checkpoint: Checkpoint) -> SamplerInfo:
    """What a request gets for every field it leaves out."""
    config = checkpoint.config
    return SamplerInfo(length=config.seq_len, **dict(config.sampler_settings))


def preset_settings(checkpoint: Checkpoint) -> dict[Preset, SamplerSettings]:
    """What a request that names each preset gets for every sampler field it leaves out."""
    return {name: checkpoint.config.settings_for(name) for name in PRESETS}


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
    try:
        canvas = request_canvas(body, checkpoint)  # ending, segments or edit: text fixed anywhere
    except InvalidCanvas as err:
        raise _invalid(err.field, str(err), body.model_dump(include={err.field})[err.field]) from err
    prefix = prompt_ids(checkpoint.tokenizer, body.prompt)
    if canvas is None and len(prefix) > length:
        room = (
            f"shorten it or ask for a longer length (up to {checkpoint.max_positions})"
            if length < checkpoint.max_positions
            else f"shorten it: {length} tokens is the model's maximum"
        )
        raise _invalid(
            "prompt", f"The prompt takes {len(prefix)} tokens, more than the length {length}; {room}", body.prompt
        )
    sampler = checkpoint.config.settings_for(body.preset).override(body)
    seed = new_seed() if body.seed is None else body.seed
    spec = GenerationSpec(tuple(prefix), length, sampler, seed, stream_every)
    if canvas is not None:
        spec = GenerationSpec(canvas.prefix, canvas.length, sampler, seed, stream_every, canvas.pinned)
    typed = prompt_span(checkpoint.tokenizer, body.prompt)
    return Job(spec, model_name(checkpoint.source), stream_format=body.stream_format, canvas=canvas, typed=typed)


def step_delta(update: StepUpdate, checkpoint: Checkpoint) -> StepDelta:
    """What an update revealed: each position's token, as the tokenizer spells it, and its probability,
    and the positions it returned to the mask (revision sampling)."""
    pieces = checkpoint.tokenizer.convert_ids_to_tokens([reveal.id for reveal in update.changed])
    return StepDelta(
        step=update.step,
        steps=update.num_steps,
        t=update.t,
        masked=update.ids.count(checkpoint.mask_id),
        changed=[
            Revealed(pos=reveal.pos, id=reveal.id, text=piece, p=reveal.p)
            for reveal, piece in zip(update.changed, pieces, strict=True)
        ],
        remasked=list(update.remasked),
    )


def step_event(update: StepUpdate, job: Job, checkpoint: Checkpoint) -> StepEvent:
    """The `step` event for an update: the tokens revealed and the draft with visible masks."""
    return StepEvent(**dict(step_delta(update, checkpoint)), text=job.text(update.ids, checkpoint))


STEP_DATA: dict[StreamFormat, Callable[[StepUpdate, Job, Checkpoint], str]] = {
    "json": lambda update, job, checkpoint: step_event(update, job, checkpoint).model_dump_json(),
    "deltas": lambda update, job, checkpoint: step_delta(update, checkpoint).model_dump_json(),
    "text": lambda update, job, checkpoint: job.text(update.ids, checkpoint),
}
"""The data of a `step` event in each `stream_format`."""


def result(job: Job, finished: Finished, checkpoint: Checkpoint) -> GenerateResponse:
    """The finished story: the JSON response and the `done` event."""
    return GenerateResponse(
        text=job.text(finished.ids, checkpoint),
        seed=job.spec.seed,
        steps=finished.num_steps,
        length=job.spec.length,
        tokens=without_pad_tail(finished.ids, checkpoint.tokenizer.pad_token_id),
        elapsed_s=round(finished.elapsed_s, 4),
        forwards=finished.forwards,
        tokens_per_forward=job.spec.written / finished.forwards if finished.forwards else 0.0,
        model=job.model,
        request_id=job.request_id,
    )


def error_event(failed: Failed, job: Job, checkpoint: Checkpoint) -> ErrorEvent:
    """Why the request ended early, with its draft so far: a timeout need not throw the work away."""
    draft = None if failed.draft is None else job.text(failed.draft, checkpoint)
    return ErrorEvent(error=failed.reason, detail=failed.message, draft=draft)
