"""The serving logic behind /v1/completions and /v1/models: OpenAI's request as storydiff jobs, answered
through the serving core (app/api/submission.py) as /generate is, as one JSON body or as OpenAI's
`text_completion` chunks.

Each story (prompts × n) is its own engine request, laid out and sampled by /generate's own rules
(app/api/jobs.py: the same checkpoint defaults, presets and admission), the i-th story of a prompt
with seed + i, and all are submitted at once, so they share the engine's batches. A stream sends,
per story, what became final since its previous chunk (app/api/openai/text.py), or with `diffusing`
every step's whole draft; a story's last chunk has its `finish_reason`; then `data: [DONE]`, as vLLM
and OpenAI. A failure after the stream started is a `data: {"error": ...}` chunk (the `openai`
library raises it as an APIError), then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from fastapi import Request, Response
from sse_starlette import ServerSentEvent

from app.api.admission import admit
from app.api.clients import client_of
from app.api.errors import safe_text
from app.api.jobs import Layout, new_job
from app.api.openai.errors import ERROR_TYPES, OpenAIError
from app.api.openai.protocol import (
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
from app.api.openai.text import CompletionText
from app.api.runtime import Serving
from app.api.submission import FAILURE_STATUS, Submission, cancel_all, event_stream, json_response
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import MAX_SEED, new_seed
from app.diffusion.template import prompt_template
from app.diffusion.text import decode_story
from app.engine import Failed, Finished, StepUpdate, Update
from app.logging_setup import current_request_id

log = logging.getLogger(__name__)

DONE = "[DONE]"


@dataclass
class Choice:
    """One story of a completion: its engine request, and its text as it becomes final."""

    index: int
    submission: Submission
    text: CompletionText
    prompt_tokens: int

    @property
    def seed(self) -> int:
        return self.submission.job.spec.seed


def model_list(serving: Serving) -> ModelList:
    """GET /v1/models: the one model this server serves."""
    checkpoint = serving.checkpoint
    card = ModelCard(id=checkpoint.name, created=int(time.time()), max_model_len=checkpoint.max_positions)
    return ModelList(data=[card])


def _check_model(body: CompletionRequest, checkpoint: Checkpoint) -> str:
    served = checkpoint.name
    if body.model is not None and body.model != served:  # the published name only, never a path
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
    if max_tokens is None:
        return min(max(checkpoint.config.length_for(None), prompt_tokens + 1), limit)
    return min(prompt_tokens + max_tokens, limit)


def _layout(prompt: str, max_tokens: int | None, checkpoint: Checkpoint) -> Layout:
    """Where one prompt's stories lie: the prompt, then the story's tokens (no blanks in a completion)."""
    if prompt_template(prompt) is not None:
        raise OpenAIError(
            400,
            "The prompt holds a [___:N] blank, which a completion does not fill: send the story to "
            "POST /generate, where the prompt's blanks (or `segments`) are written, or leave the blank out.",
            "prompt",
            None,
        )
    plain = Layout.of_prompt(prompt, 0, checkpoint)
    return replace(plain, length=story_length(len(plain.prefix), max_tokens, checkpoint))


def _submit(body: CompletionRequest, serving: Serving, client: str) -> list[Choice]:
    """Every story of `body` submitted to the engine (429 for all if one does not fit)."""
    checkpoint, tokenizer = serving.checkpoint, serving.checkpoint.tokenizer
    first_seed = new_seed() if body.seed is None else body.seed
    sampler = checkpoint.config.settings_for(body.preset).override(body)
    choices: list[Choice] = []
    try:
        for prompt in body.prompts:
            layout = _layout(prompt, body.max_tokens, checkpoint)
            prompt_text = decode_story(layout.prefix, tokenizer, layout.typed)
            for i in range(body.n):
                seed = (first_seed + i) % (MAX_SEED + 1)
                job = replace(new_job(layout, sampler, seed, 1 if body.stream else None, checkpoint), client=client)
                admit(job.spec, serving, client)  # the client's quota and turn
                index = len(choices)
                submission = Submission.start(job, serving.engine, serving.settings.timeout_s, choice=index)
                text = CompletionText(tokenizer, prompt_text, body.stops, layout.typed)
                choices.append(Choice(index, submission, text, len(layout.prefix)))
    except BaseException:
        cancel_all(choice.submission for choice in choices)
        raise
    return choices


async def completion_response(body: CompletionRequest, request: Request, serving: Serving) -> Response:
    """POST /v1/completions: submit every story, answer with one JSON body or a chunk stream."""
    model = _check_model(body, serving.checkpoint)
    if body.ignored_fields:
        log.warning("ignored fields this API does not know: %s", safe_text(repr(body.ignored_fields)))
    choices = _submit(body, serving, client_of(request, serving.settings))  # whose quota
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

    def answer(finished: list[Finished]) -> Completion:
        answers = []
        for choice, outcome in zip(choices, finished, strict=True):
            text, reason = choice.text.final(outcome.ids)
            answers.append(CompletionChoice(index=choice.index, text=text, finish_reason=reason, seed=choice.seed))
        usage = _usage(choices, [answer.text for answer in answers], body.n, serving)
        return header.model_copy(update={"choices": answers, "usage": usage})

    submissions = [choice.submission for choice in choices]
    return await json_response(submissions, request, answer, lambda failed, _: _failure(failed))


def _chunk_stream(header: Completion, choices: list[Choice], body: CompletionRequest, serving: Serving) -> Response:
    """The `text/event-stream` of `text_completion` chunks, on the core's event stream (pings, the
    client watched, shutdown) as /generate's."""
    submissions = [choice.submission for choice in choices]

    def fail_all(failure: Failed) -> None:
        for submission in submissions:
            submission.channel.fail(failure)

    def render_failure(err: Exception) -> list[ServerSentEvent]:
        failure = _failure(Failed("internal", f"streaming failed: {type(err).__name__}"))
        return [ServerSentEvent(failure.model_dump_json()), ServerSentEvent(DONE)]

    return event_stream(
        _chunks(header, choices, body, serving),
        serving.settings,
        fail=fail_all,
        render_failure=render_failure,
        close=lambda: cancel_all(submissions),
    )


class _StreamState:
    """What a stream has sent: each story's text so far, and which stories ended."""

    def __init__(self, header: Completion, diffusing: bool) -> None:
        self.header, self.diffusing = header, diffusing
        self.texts: dict[int, str] = {}

    def chunk(self, choice: Choice, text: str, reason: FinishReason | None = None) -> ServerSentEvent:
        answer = CompletionChoice(index=choice.index, text=text, finish_reason=reason, seed=choice.seed)
        return ServerSentEvent(self.header.model_copy(update={"choices": [answer]}).model_dump_json())

    def on_update(self, choice: Choice, update: Update) -> tuple[ServerSentEvent | None, bool]:
        """The chunk for `update` (None: nothing new) and whether the story ended."""
        if isinstance(update, StepUpdate):
            if self.diffusing:
                return self.chunk(choice, choice.text.draft(update.ids)), False
            delta = choice.text.delta(update.ids)
            if choice.text.stopped:  # a stop string is final text: the story ends here
                choice.submission.handle.cancel()
                choice.submission.log("stopped")
                return self._end(choice, delta, "stop"), True
            return (self.chunk(choice, delta) if delta else None), False
        assert isinstance(update, Finished), "failures end the whole stream"
        choice.submission.log(update)
        delta, reason = choice.text.final(update.ids)
        return self._end(choice, choice.text.sent if self.diffusing else delta, reason), True

    def _end(self, choice: Choice, text: str, reason: FinishReason) -> ServerSentEvent:
        self.texts[choice.index] = choice.text.sent
        return self.chunk(choice, text, reason)


async def _chunks(
    header: Completion, choices: list[Choice], body: CompletionRequest, serving: Serving
) -> AsyncGenerator[ServerSentEvent, None]:
    """Each story's chunks as its steps arrive, whichever story they are of; then usage and [DONE]."""
    loop, state = asyncio.get_running_loop(), _StreamState(header, body.diffusing)
    reading = {loop.create_task(choice.submission.channel.next()): choice for choice in choices}
    try:
        while reading:
            done, _ = await asyncio.wait(reading, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda task: reading[task].index):
                choice, update = reading.pop(task), task.result()
                if isinstance(update, Failed) or update is None:
                    failure = update or Failed("internal", "the story ended without an outcome")
                    choice.submission.log(failure)
                    yield ServerSentEvent(_failure(failure).model_dump_json())
                    yield ServerSentEvent(DONE)
                    return
                chunk, ended = state.on_update(choice, update)
                if chunk is not None:
                    yield chunk
                if not ended:
                    reading[loop.create_task(choice.submission.channel.next())] = choice
        if body.stream_options is not None and body.stream_options.include_usage:
            texts = [state.texts[choice.index] for choice in choices]
            usage = _usage(choices, texts, body.n, serving)
            yield ServerSentEvent(header.model_copy(update={"usage": usage}).model_dump_json())
        yield ServerSentEvent(DONE)
    finally:
        for task, choice in reading.items():
            task.cancel()
            choice.submission.log("cancelled")  # the client left, or another failed
        cancel_all(choice.submission for choice in choices)  # no-op once finished; frees the slots
