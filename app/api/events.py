"""The engine's updates as response bodies: `step` event data in each `stream_format`, the finished
story (the JSON answer and the `done` event), and the `error` event."""

from __future__ import annotations

from collections.abc import Callable

from app.api.jobs import Job
from app.api.schemas import ErrorEvent, GenerateResponse, Revealed, StepDelta, StepEvent, StreamFormat
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.text import without_pad_tail
from app.engine import Failed, Finished, StepUpdate


def step_delta(update: StepUpdate, checkpoint: Checkpoint, full: bool = False) -> StepDelta:
    """What an update revealed: each position's token, as the tokenizer spells it, and its probability,
    and the positions it returned to the mask (revision sampling); `full`: every change so far, a frame
    that replaces what the client had."""
    pieces = checkpoint.tokenizer.convert_ids_to_tokens([reveal.id for reveal in update.changed])
    return StepDelta(
        step=update.step,
        steps=update.num_steps,
        t=update.t,
        masked=update.ids.count(checkpoint.mask_id),
        full=full,
        changed=[
            Revealed(pos=reveal.pos, id=reveal.id, text=piece, p=reveal.p)
            for reveal, piece in zip(update.changed, pieces, strict=True)
        ],
        remasked=list(update.remasked),
    )


def step_event(update: StepUpdate, job: Job, checkpoint: Checkpoint, full: bool = False) -> StepEvent:
    """The `step` event for an update: the tokens revealed and the draft with visible masks."""
    return StepEvent(**dict(step_delta(update, checkpoint, full)), text=job.text(update.ids, checkpoint))


ONLY_WHEN_FULL: dict[bool, set[str] | None] = {True: None, False: {"full"}}
"""What a step event leaves out: `full` except on a full frame, which is rare (events stay small)."""

STEP_DATA: dict[StreamFormat, Callable[[StepUpdate, Job, Checkpoint, bool], str]] = {
    "json": lambda update, job, checkpoint, full: step_event(update, job, checkpoint, full).model_dump_json(
        exclude=ONLY_WHEN_FULL[full]
    ),
    "deltas": lambda update, job, checkpoint, full: step_delta(update, checkpoint, full).model_dump_json(
        exclude=ONLY_WHEN_FULL[full]
    ),
    "text": lambda update, job, checkpoint, full: job.text(update.ids, checkpoint),  # always the whole draft
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
    ids = failed.draft
    if ids is None and failed.reason in ("shutdown", "timeout"):  # ended before its first step: the canvas
        ids = job.spec.start_ids(checkpoint.mask_id)
    draft = None if ids is None else job.text(ids, checkpoint)
    return ErrorEvent(error=failed.reason, detail=failed.message, draft=draft)
