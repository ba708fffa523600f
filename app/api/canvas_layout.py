"""POST /canvas: the sequence a request starts from, without writing it.

A stream's events carry only what the model reveals, never the fixed tokens. A client that draws
every position (the page) asks here first where the fixed text of an `ending`, `segments` or `edit`
lies and how the tokenizer cut it; the same checks as POST /generate give the same 422s.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.admission import cap_cost
from app.api.jobs import request_layout
from app.api.schemas import GenerateRequest
from app.diffusion.canvas import Canvas
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.typed_text import model_text


class FixedToken(BaseModel):
    """A position the model never writes."""

    pos: int
    id: int
    text: str = Field(description="The token as the tokenizer spells it (WordPiece: '##' continues a word).")


class TypedText(BaseModel):
    """Typed text that its tokens do not spell (accents, emoji, curly quotes): the story shows `text` there."""

    start: int
    end: int
    text: str


class CanvasLayout(BaseModel):
    """The sequence before the first step: its length, its fixed tokens, and the blanks between them."""

    length: int
    fixed: list[FixedToken] = Field(description="Prompt, texts, ending and special tokens, in order.")
    blanks: list[tuple[int, int]] = Field(description="The [start, end) runs of positions the model writes.")
    typed: list[TypedText] = Field(
        default_factory=list,
        description="The [start, end) runs of fixed tokens that read typed text differently (the model reads "
        "'Zoë' as 'Zoe', an emoji as [UNK]), with the text as typed, which the story's `text` shows.",
    )


def canvas_layout(body: GenerateRequest, checkpoint: Checkpoint, max_request_cost: int | None = None) -> CanvasLayout:
    """Where `body`'s fixed tokens lie; raises RequestValidationError (422) as POST /generate would,
    the cost cap included."""
    layout = request_layout(body, checkpoint)
    cap_cost(checkpoint.config.settings_for(body.preset).override(body).steps, layout.length, max_request_cost)
    fixed = dict(sorted((dict(enumerate(layout.prefix)) | dict(layout.pinned)).items()))
    pieces = checkpoint.tokenizer.convert_ids_to_tokens(list(fixed.values()))
    canvas = Canvas(tuple(fixed.get(pos, checkpoint.mask_id) for pos in range(layout.length)), checkpoint.mask_id)
    tokens = [
        FixedToken(pos=pos, id=token, text=piece) for (pos, token), piece in zip(fixed.items(), pieces, strict=True)
    ]
    unk = checkpoint.tokenizer.unk_token_id
    typed = [
        TypedText(start=span.start, end=span.end, text=span.text)
        for span in (layout.canvas.texts if layout.canvas is not None else ())
        if model_text(span.text) != span.text or unk in canvas.ids[span.start : span.end]
    ]
    return CanvasLayout(length=layout.length, fixed=tokens, blanks=canvas.blanks, typed=typed)
