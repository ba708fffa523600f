"""A request that writes around fixed text (`ending`, `segments`, `edit`, or a prompt with `[___:N]`
blanks) as a canvas for the engine.

The layout rules live in `app.diffusion.canvas`; this maps the request's fields onto them and turns a
`CanvasError` into the 422 naming the field it is about (the one place canvas errors are translated).
A prompt's blanks are read as the page and `storydiff generate --template` read them: the prompt is
the whole story, its blanks set the length.
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from app.api.invalid import invalid_field
from app.api.schemas import BlankSegment, GenerateRequest
from app.diffusion.canvas import (
    Blank,
    Canvas,
    CanvasError,
    Segment,
    Text,
    build_canvas,
    edit_canvas,
    ending_canvas,
    prompt_template,
)
from app.diffusion.checkpoint import Checkpoint


def request_canvas(body: GenerateRequest, checkpoint: Checkpoint) -> Canvas | None:
    """The canvas `body` asks for; None for a plain request (a prompt or nothing, then the model's story).
    Raises RequestValidationError (422) naming the field for a canvas the model cannot write."""
    tokenizer, max_length = checkpoint.tokenizer, checkpoint.max_positions
    template = prompt_template(body.prompt, body.ending)
    if template is not None and body.length is not None:
        raise _invalid(
            body,
            "length",
            "the prompt's [___:N] blanks set the story's length: leave out `length` (or send the story as `segments`)",
        )
    try:
        if body.edit is not None:
            spans = [(span.start, span.end) for span in body.edit.spans]
            vocab_size = int(checkpoint.model.config.vocab_size)
            return edit_canvas(body.edit.tokens, spans, checkpoint.mask_id, vocab_size, max_length)
        if body.segments is not None:
            segments: list[Segment] = [
                Blank(s.blank, s.flexible) if isinstance(s, BlankSegment) else Text(s.text) for s in body.segments
            ]
            return build_canvas(tokenizer, segments, max_length)
        if template is not None:
            return build_canvas(tokenizer, template, max_length)
        if body.ending is not None:
            length = checkpoint.config.length_for(body.length)
            return ending_canvas(tokenizer, body.prompt, body.ending, length, max_length)
    except CanvasError as err:
        field = next(name for name in ("edit", "segments", "prompt", "ending") if _asks(body, name, template))
        raise _invalid(body, field, str(err)) from err
    return None


def _invalid(body: GenerateRequest, field: str, message: str) -> RequestValidationError:
    return invalid_field(field, message, body.model_dump(include={field})[field])


def _asks(body: GenerateRequest, field: str, template: list[Segment] | None) -> bool:
    """Whether `field` is the one that laid out the canvas (the prompt only when it holds blanks)."""
    return template is not None if field == "prompt" else getattr(body, field) is not None
