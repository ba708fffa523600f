"""The engine's updates as response bodies: `step` event data in each `stream_format`, the finished
story (the JSON answer and the `done` event), and the `error` event."""

from __future__ import annotations

from collections.abc import Callable

from app.api.jobs import Job
from app.api.schemas import ErrorEvent, GenerateResponse, Revealed, StepDelta, StepEvent, StreamFormat
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.text import without_pad_tail
from app.engine import Failed, Finished, StepUpdate


def step_delta(update: StepUpdate, checkpoint: Checkpoint) -> StepDelta:
    """What an update revealed: each position's token, as the tokenizer spells it, and its probability."""
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
