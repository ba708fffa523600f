"""The bodies of the OpenAI-compatible routes (`/v1/completions`, `/v1/models`), in OpenAI's shape.

A client of OpenAI's legacy completions API (the `openai` library, LangChain, vLLM's clients) works
unchanged. OpenAI's fields that would change the answer's meaning and that a masked diffusion model
does not have (token log-probabilities, echo, best-of, penalties, logit bias, a suffix) are accepted
only at their neutral values and otherwise refused with a 400 naming the field; fields unknown to
both APIs are ignored (as vLLM does) and their names logged. storydiff's sampler fields (`steps`,
`remasking`, `top_k`, ...) and `preset` are extensions, for the `openai` client's `extra_body`.
As in OpenAI's API, `null` means "the default" for every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.api.schemas import MAX_LENGTH, MAX_PROMPT_CHARS, GenerateRequest
from app.diffusion.sampler_settings import MAX_SEED, Preset, SamplerOverrides

MAX_CHOICES = 16
"""Most stories one request may ask for (prompts × n); each is its own engine request."""
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 200

PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
FinishReason = Literal["stop", "length"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with `usage` and no choices.")


def _refused(why: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", "not supported by storydiff: {why}", {"why": why})


class CompletionRequest(SamplerOverrides):
    """POST /v1/completions: OpenAI's completion request, plus storydiff's sampler fields."""

    model_config = ConfigDict(
        extra="allow",  # unknown fields are ignored (their names are logged), as vLLM does
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"model": "tinystories-default", "prompt": "Once upon a time", "n": 2}]},
    )

    model: str | None = Field(None, description="The served model's id (GET /v1/models); absent: that model.")
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_CHOICES)] = Field(
        "",
        description="The story's beginning (empty: a story from nothing), or a list of them: n stories each.",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_LENGTH,
        description="Tokens after the prompt: the story's length is prompt tokens + max_tokens, cut to the "
        "model's positions. Absent: the checkpoint's length (GET /info), or one token more than the prompt.",
    )
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Stories per prompt; the i-th has the seed seed + i.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the first story; absent: a new one.")
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = Field(
        None, description="The text is cut before the first of these strings, with finish_reason 'stop'."
    )
    stream: bool = Field(False, description="Server-sent `text_completion` chunks, then `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    diffusing: bool = Field(
        False,
        description="Extension (as Inception's Mercury): with `stream`, every denoising step's whole draft "
        "(masked positions as the placeholder), each chunk replacing the last, instead of appended deltas.",
    )
    preset: Preset | None = Field(None, description=GenerateRequest.model_fields["preset"].description)
    echo: bool = Field(False, description="Only false: the text never repeats the prompt.")
    logprobs: int | None = Field(None, description="Only null: a diffusion model's tokens have no log-probabilities.")
    best_of: int | None = Field(None, description="Only null or n.")
    suffix: str | None = Field(None, description="Only null or empty.")
    presence_penalty: float = Field(0.0, description="Only 0.")
    frequency_penalty: float = Field(0.0, description="Only 0.")
    logit_bias: dict[str, float] | None = Field(None, description="Only null or empty.")
    user: str | None = Field(None, description="Accepted and ignored.")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, body: Any) -> Any:
        """OpenAI's clients send `null` for "not given"; /generate's "null turns it off" does not apply."""
        if isinstance(body, dict):
            return {name: value for name, value in body.items() if value is not None}
        return body

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise _refused("echo; the prompt is the start of the story, which `prompt` + `text` make up")
        return echo

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: int | None) -> int | None:
        if logprobs is not None:
            raise _refused("logprobs; a masked diffusion model reveals tokens in no fixed order")
        return logprobs

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        # An ending fixed at the end of the story is infilling; it can map to /generate's `ending` once that lands.
        if suffix:
            raise _refused("suffix (yet)")
        return suffix

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, penalty: float) -> float:
        if penalty != 0:
            raise _refused("penalties other than 0")
        return penalty

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias:
            raise _refused("logit_bias")
        return bias

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        if best_of is not None and best_of != info.data.get("n", 1):
            raise _refused("best_of other than n; every story asked for is returned")
        return best_of

    @model_validator(mode="after")
    def _bounded_choices(self) -> CompletionRequest:
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts × n is {len(self.prompts)} × {self.n}, more than {MAX_CHOICES} stories")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt index × n + story index.")
    text: str = Field(description="The story after the prompt; in a stream, what this chunk adds.")
    logprobs: None = None
    finish_reason: FinishReason | None = Field(
        None, description="stop: the model ended the story, or a stop string cut it; length: it filled every position."
    )
    seed: int = Field(description="Extension: this story's seed (the same request with this seed and n=1 replays it).")


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="Each prompt's tokens, counted once per prompt.")
    completion_tokens: int = Field(description="The tokens of every choice's text.")
    total_tokens: int


class Completion(BaseModel):
    """The answer, and each chunk of a stream (there `usage` is null but in the last with include_usage)."""

    id: str = Field(description="'cmpl-' and the request id (the X-Request-ID header).")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "storydiff"
    max_model_len: int = Field(description="The model's positions: the most prompt + max_tokens (as vLLM).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error of the /v1 routes, in OpenAI's shape."""

    error: ErrorDetail
