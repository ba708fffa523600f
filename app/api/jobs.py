"""A request as an engine job: where its story lies (its layout), and the checkpoint's defaults under
the request's fields. Rendering the engine's updates is app/api/events.py's job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.api.infill import request_canvas
from app.api.invalid import invalid_field
from app.api.schemas import GenerateRequest, SamplerInfo, StreamFormat
from app.diffusion.canvas import Canvas
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import PRESETS, Preset, SamplerSettings, new_seed
from app.diffusion.sampling import Pinned
from app.diffusion.text import FixedSpan, prompt_ids, prompt_span, story_text
from app.engine import GenerationSpec
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
    client: str = ""  # who asked (app/api/clients.py): its quota and its turn in the engine

    def text(self, ids: Sequence[int], checkpoint: Checkpoint) -> str:
        """The story (or draft) in `ids`: typed text as typed, written text decoded, masks as placeholders."""
        if self.canvas is not None:
            return self.canvas.story_text(ids, checkpoint.tokenizer)
        return story_text(ids, checkpoint.tokenizer, self.typed)


@dataclass(frozen=True)
class Layout:
    """Where a story lies before its first step: the fixed prefix, the length, and tokens pinned anywhere."""

    prefix: tuple[int, ...]
    length: int
    pinned: Pinned = ()
    canvas: Canvas | None = None  # the text fixed around blanks, if the request asked for any
    typed: tuple[FixedSpan, ...] = ()  # where the prompt lies, to show it as typed

    @classmethod
    def of_prompt(cls, prompt: str | None, length: int, checkpoint: Checkpoint) -> Layout:
        """A plain story: `prompt`'s tokens, then `length` minus them to write."""
        tokenizer = checkpoint.tokenizer
        return cls(tuple(prompt_ids(tokenizer, prompt)), length, typed=prompt_span(tokenizer, prompt))


def request_layout(body: GenerateRequest, checkpoint: Checkpoint) -> Layout:
    """Where `body`'s story lies; raises RequestValidationError (422) for what the model cannot do."""
    length = checkpoint.config.length_for(body.length)
    if length > checkpoint.max_positions:
        raise invalid_field(
            "length",
            f"Input should be less than or equal to {checkpoint.max_positions}, the model's maximum positions",
            length,
            "less_than_equal",
        )
    plain = Layout.of_prompt(body.prompt, length, checkpoint)
    canvas = request_canvas(body, checkpoint)  # ending, segments or edit: text fixed anywhere
    if canvas is not None:
        return Layout(canvas.prefix, canvas.length, canvas.pinned, canvas, plain.typed)
    if len(plain.prefix) > length:
        room = (
            f"shorten it or ask for a longer length (up to {checkpoint.max_positions})"
            if length < checkpoint.max_positions
            else f"shorten it: {length} tokens is the model's maximum"
        )
        raise invalid_field(
            "prompt", f"The prompt takes {len(plain.prefix)} tokens, more than the length {length}; {room}", body.prompt
        )
    return plain


def new_job(
    layout: Layout,
    sampler: SamplerSettings,
    seed: int,
    stream_every: int | None,
    checkpoint: Checkpoint,
    stream_format: StreamFormat = "json",
) -> Job:
    """The engine job for a story laid out as `layout`, sampled with `sampler` from `seed`."""
    spec = GenerationSpec(layout.prefix, layout.length, sampler, seed, stream_every, layout.pinned)
    return Job(spec, checkpoint.name, stream_format=stream_format, canvas=layout.canvas, typed=layout.typed)


def build_job(body: GenerateRequest, checkpoint: Checkpoint, stream_every: int | None) -> Job:
    """The engine job for `body`; raises RequestValidationError (422) for what the model cannot do."""
    layout = request_layout(body, checkpoint)
    sampler = checkpoint.config.settings_for(body.preset).override(body)
    seed = new_seed() if body.seed is None else body.seed
    return new_job(layout, sampler, seed, stream_every, checkpoint, body.stream_format)


def sampler_defaults(checkpoint: Checkpoint) -> SamplerInfo:
    """What a request gets for every field it leaves out."""
    config = checkpoint.config
    return SamplerInfo(length=config.seq_len, **dict(config.sampler_settings))


def preset_settings(checkpoint: Checkpoint) -> dict[Preset, SamplerSettings]:
    """What a request that names each preset gets for every sampler field it leaves out."""
    return {name: checkpoint.config.settings_for(name) for name in PRESETS}
