"""The serving logic behind /v1/completions and /v1/models: OpenAI's request as storydiff jobs, answered
by the same engine as /generate, as one JSON body or as OpenAI's `text_completion` chunks.

Each story (prompts × n) is its own engine request, built by /generate's own `build_job` (so the
same checkpoint defaults, bounds and admission apply), the i-th story of a prompt with seed + i, and
all are submitted at once, so they share the engine's batches. A stream sends, per story, what
became final since its previous chunk (app/api/openai_text.py), or with `diffusing` every step's
whole draft; a story's last chunk has its `finish_reason`; then `data: [DONE]`, as vLLM and OpenAI.
A failure after the stream started is a `data: {"error": ...}` chunk (the `openai` library raises it
as an APIError), then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.api.admission import admit
from app.api.clients import client_of
from app.api.errors import safe_text
from app.api.jobs import Job, build_job
from app.api.openai_errors import ERROR_TYPES, OpenAIError
from app.api.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    ModelCard,
    ModelList,
)
from app.api.openai_text import CompletionText
from app.api.request_log import log_generation
from app.api.runtime import Serving
from app.api.schemas import GenerateRequest
from app.api.security import model_name
from app.api.serving import CLIENT_CLOSED_REQUEST, FAILURE_STATUS, outcome_unless_gone
from app.api.streaming import PING_COMMENT
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import MAX_SEED, SamplerSettings, new_seed
from app.diffusion.template import prompt_template
from app.diffusion.text import decode_story, prompt_ids, prompt_span
from app.engine import Failed, Finished, RequestHandle, StepUpdate, Update, UpdateChannel
from app.logging_setup import current_request_id

log = logging.getLogger(__name__)

DONE = "[DONE]"
PASSED_ON = {*SamplerSettings.model_fields, "preset"}
"""CompletionRequest's fields that go to /generate's request as they are."""


@dataclass
class Choice:
    """One story of a completion: its engine request, and its text as it becomes final."""

    index: int
    job: Job
    handle: RequestHandle
    channel: UpdateChannel
    text: CompletionText
    prompt_tokens: int


def model_list(serving: Serving) -> ModelList:
    """GET /v1/models: the one model this server serves."""
    checkpoint = serving.checkpoint
    card = ModelCard(id=model_name(checkpoint.source), created=int(time.time()), max_model_len=checkpoint.max_positions)
    return ModelList(data=[card])


def _check_model(body: CompletionRequest, checkpoint: Checkpoint) -> str:
    served = model_name(checkpoint.source)
    if body.model is not None and body.model != served:  # the published name only, never a path (issue 29)
        raise OpenAIError(
            404,
            f"The model `{safe_text(body.model)}` does not exist; this server serves `{served}`.",
            "model",
            "model_not_found",
        )
    return served


def story_length(prompt_tokens: int, max_tokens: int | None, checkpoint: Checkpoint) -> int:
    """Prompt tokens + max_tokens, cut to the model's positions (absent: the checkpoint's length, or one
    more than the prompt)."""
    limit = checkpoint.max_positions
    if prompt_tokens >= limit:
        raise OpenAIError(
            400,
            f"The prompt takes {prompt_tokens} tokens; this model has {limit} positions, so none is left for "
            "the story. Shorten the prompt.",
            "prompt",
            "context_length_exceeded",
        )
    wanted = max(checkpoint.config.seq_len, prompt_tokens + 1) if max_tokens is None else prompt_tokens + max_tokens
    return min(wanted, limit)


def _submit(body: CompletionRequest, serving: Serving, client: str) -> list[Choice]:
    """Every story of `body` submitted to the engine (429 for all if one does not fit)."""
    checkpoint, tokenizer = serving.checkpoint, serving.checkpoint.tokenizer
    first_seed = new_seed() if body.seed is None else body.seed
    passed_on = body.model_dump(exclude_unset=True, include=PASSED_ON)
    loop = asyncio.get_running_loop()
    choices: list[Choice] = []
    try:
        for prompt in body.prompts:
            if prompt_template(prompt) is not None:
                raise OpenAIError(
                    400,
                    "The prompt holds a [___:N] blank, which a completion does not fill: send the story to "
                    "POST /generate, where the prompt's blanks (or `segments`) are written, or leave the blank out.",
                    "prompt",
                    None,
                )
            prefix = prompt_ids(tokenizer, prompt)
            length = story_length(len(prefix), body.max_tokens, checkpoint)
            typed = prompt_span(tokenizer, prompt)
            prompt_text = decode_story(prefix, tokenizer, typed)
            for i in range(body.n):
                seed = (first_seed + i) % (MAX_SEED + 1)
                request = GenerateRequest(prompt=prompt or None, length=length, seed=seed, **passed_on)
                job = build_job(request, checkpoint, 1 if body.stream else None)
                admit(job.spec, serving, client)  # issue 29: the client's quota and turn
                channel = UpdateChannel(loop)
                timeout = serving.settings.timeout
                handle = serving.engine.submit(job.spec, channel.publish, timeout, job.request_id, client)
                text = CompletionText(tokenizer, prompt_text, body.stops, typed)
                choices.append(Choice(len(choices), job, handle, channel, text, len(prefix)))
    except BaseException:
        for choice in choices:
            choice.handle.cancel()
        raise
    return choices


async def completion_response(body: CompletionRequest, request: Request, serving: Serving) -> Response:
    """POST /v1/completions: submit every story, answer with one JSON body or a chunk stream."""
    model = _check_model(body, serving.checkpoint)
    if body.ignored_fields:
        log.warning("ignored fields this API does not know: %s", safe_text(repr(body.ignored_fields)))
    choices = _submit(body, serving, client_of(request, serving.settings))  # issue 29: whose quota
    header = Completion(
        id=f"cmpl-{current_request_id() or uuid.uuid4().hex}", created=int(time.time()), model=model, choices=[]
    )
    if body.stream:
        return _chunk_stream(header, choices, body, serving)
    return await _json_answer(header, choices, body, request, serving)


def _count(text: str, serving: Serving) -> int:
    return len(serving.checkpoint.tokenizer(text, add_special_tokens=False)["input_ids"])


def _usage(choices: list[Choice], texts: list[str], n: int, serving: Serving) -> CompletionUsage:
    prompt_tokens = sum(choice.prompt_tokens for choice in choices if choice.index % n == 0)  # once per prompt
    completion_tokens = sum(_count(text, serving) for text in texts)
    return CompletionUsage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _failure(failed: Failed) -> ErrorResponse:
    status = FAILURE_STATUS[failed.reason]
    return ErrorResponse(
        error=ErrorDetail(message=failed.message, type=ERROR_TYPES.get(status, "server_error"), code=failed.reason)
    )


async def _json_answer(
    header: Completion, choices: list[Choice], body: CompletionRequest, request: Request, serving: Serving
) -> Response:
    """Every story, once all are done; the first failure fails the answer (and cancels the rest)."""
    finished: list[Finished] = []
    try:
        for choice in choices:
            outcome = await outcome_unless_gone(choice.channel, request)
            log_generation(choice.handle, outcome or "cancelled", choice=choice.index)
            if outcome is None:
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            if isinstance(outcome, Failed):
                return JSONResponse(_failure(outcome).model_dump(), status_code=FAILURE_STATUS[outcome.reason])
            finished.append(outcome)
    finally:
        for choice in choices:
            choice.handle.cancel()  # no-op for finished ones; frees the others' slots
    answers = []
    for choice, outcome in zip(choices, finished, strict=True):
        text, reason = choice.text.final(outcome.ids)
        answers.append(CompletionChoice(index=choice.index, text=text, finish_reason=reason, seed=choice.job.spec.seed))
    usage = _usage(choices, [answer.text for answer in answers], body.n, serving)
    return JSONResponse(header.model_copy(update={"choices": answers, "usage": usage}).model_dump())


def _chunk_stream(header: Completion, choices: list[Choice], body: CompletionRequest, serving: Serving) -> Response:
    """The `text/event-stream` of `text_completion` chunks; sse-starlette pings, watches the client and
    ends the stream on shutdown, as for /generate (app/api/streaming.py)."""
    shutdown, settings = anyio.Event(), serving.settings

    def cancel_all() -> None:
        for choice in choices:
            choice.handle.cancel()

    return EventSourceResponse(
        _chunks(header, choices, body, serving, shutdown),
        ping=settings.ping_interval,
        ping_message_factory=lambda: ServerSentEvent(comment=PING_COMMENT),
        shutdown_event=shutdown,
        shutdown_grace_period=settings.shutdown_grace + 1.0,
        send_timeout=settings.send_timeout,
        background=BackgroundTask(cancel_all),  # also when the stream never started
    )


async def _fail_after_shutdown(shutdown: anyio.Event, grace_s: float, choices: list[Choice]) -> None:
    await shutdown.wait()
    await asyncio.sleep(grace_s)
    for choice in choices:
        choice.channel.fail(Failed("shutdown", "the server is shutting down"))


class _StreamState:
    """What a stream has sent: each story's text so far, and which stories ended."""

    def __init__(self, header: Completion, diffusing: bool) -> None:
        self.header, self.diffusing = header, diffusing
        self.texts: dict[int, str] = {}

    def chunk(self, choice: Choice, text: str, reason: FinishReason | None = None) -> ServerSentEvent:
        answer = CompletionChoice(index=choice.index, text=text, finish_reason=reason, seed=choice.job.spec.seed)
        return ServerSentEvent(self.header.model_copy(update={"choices": [answer]}).model_dump_json())

    def on_update(self, choice: Choice, update: Update) -> tuple[ServerSentEvent | None, bool]:
        """The chunk for `update` (None: nothing new) and whether the story ended."""
        if isinstance(update, StepUpdate):
            if self.diffusing:
                return self.chunk(choice, choice.text.draft(update.ids)), False
            delta = choice.text.delta(update.ids)
            if choice.text.stopped:  # a stop string is final text: the story ends here
                choice.handle.cancel()
                log_generation(choice.handle, "stopped", choice=choice.index)
                return self._end(choice, delta, "stop"), True
            return (self.chunk(choice, delta) if delta else None), False
        assert isinstance(update, Finished), "failures end the whole stream"
        log_generation(choice.handle, update, choice=choice.index)
        delta, reason = choice.text.final(update.ids)
        return self._end(choice, choice.text.sent if self.diffusing else delta, reason), True

    def _end(self, choice: Choice, text: str, reason: FinishReason) -> ServerSentEvent:
        self.texts[choice.index] = choice.text.sent
        return self.chunk(choice, text, reason)


async def _chunks(
    header: Completion, choices: list[Choice], body: CompletionRequest, serving: Serving, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    """Each story's chunks as its steps arrive, whichever story they are of; then usage and [DONE]."""
    loop, state = asyncio.get_running_loop(), _StreamState(header, body.diffusing)
    reading = {loop.create_task(choice.channel.next()): choice for choice in choices}
    watcher = loop.create_task(_fail_after_shutdown(shutdown, serving.settings.shutdown_grace, choices))
    try:
        while reading:
            done, _ = await asyncio.wait(reading, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda task: reading[task].index):
                choice, update = reading.pop(task), task.result()
                if isinstance(update, Failed) or update is None:
                    failure = update or Failed("internal", "the story ended without an outcome")
                    log_generation(choice.handle, failure, choice=choice.index)
                    yield ServerSentEvent(_failure(failure).model_dump_json())
                    yield ServerSentEvent(DONE)
                    return
                chunk, ended = state.on_update(choice, update)
                if chunk is not None:
                    yield chunk
                if not ended:
                    reading[loop.create_task(choice.channel.next())] = choice
        if body.stream_options is not None and body.stream_options.include_usage:
            texts = [state.texts[choice.index] for choice in choices]
            usage = _usage(choices, texts, body.n, serving)
            yield ServerSentEvent(header.model_copy(update={"usage": usage}).model_dump_json())
        yield ServerSentEvent(DONE)
    except Exception as err:  # e.g. rendering failed: tell the client rather than cutting the stream
        log.exception("streaming a completion failed")
        yield ServerSentEvent(_failure(Failed("internal", f"streaming failed: {type(err).__name__}")).model_dump_json())
        yield ServerSentEvent(DONE)
    finally:
        watcher.cancel()
        for task, choice in reading.items():
            task.cancel()
            log_generation(choice.handle, "cancelled", choice=choice.index)  # the client left, or another failed
        for choice in choices:
            choice.handle.cancel()  # no-op once finished; frees the batch slots when the client left
