"""POST /v1/chat/completions' request and reply bodies, in OpenAI's shape (with vLLM's extra sampling fields).

A character model reads a conversation as one text, written by a chat template (serving/routes_chat.py), so the
request keeps what a template can write (roles, text, names) and refuses, each with a 400 that says why, what it
cannot do: tools and function calls, structured output, content that is not text, roles it has no place for.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from model_interface.signatures import (MAX_LOGPROBS, MAX_TOP_K, Logprobs, MinP, SamplingSettings, Seed, Temperature,
                                        TopP)
from serving.errors import APIError, bad_request
from serving.schemas import (MAX_STOP, ReplacementChar, Request, StreamOptions, TextChanges, UnknownChars, Usage,
                             at_most, check_stop, refuse_penalties)

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system, read as system
TOOL_ROLES = ("tool", "function")
TOOLS_REASON = "this model writes text one character at a time; it cannot call tools or functions"


class ChatMessage(Request):
    """One message. `content` is a string or a list of text parts ({"type": "text", "text": ...}, joined with
    newlines)."""

    role: str = Field(description="system, developer (read as system), user or assistant")
    content: str | list[dict] | None = Field(
        description="the text, or a list of {\"type\": \"text\", \"text\": ...} parts (joined with newlines); "
                    "null only for an assistant message")
    name: str | None = Field(None, description="the speaker's name, which a template may write in place of the "
                                               "role's (the `play` template does)")
    # OpenAI's tool-calling fields, refused unless empty (TOOLS_REASON).
    tool_calls: list | None = None
    function_call: dict | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


def check_messages(messages: list[ChatMessage]) -> None:
    """Each message's role and parts are ones a chat template can write: APIError (400) naming the first that is not."""
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if message.role in TOOL_ROLES:
            raise APIError(400, f"{where}.role {message.role!r} is not supported: {TOOLS_REASON}. Roles: "
                                f"{', '.join(ROLES)}", param=f"{where}.role", code="unsupported_role")
        if message.role not in ROLES:
            raise bad_request(f"{where}.role {message.role!r} is not a role; roles: {', '.join(ROLES)}",
                              f"{where}.role")
        for name in ("tool_calls", "function_call", "tool_call_id"):
            if getattr(message, name):
                raise APIError(400, f"{where}.{name} is not supported: {TOOLS_REASON}", param=f"{where}.{name}",
                               code="unsupported_parameter")
        if message.refusal:
            raise bad_request(f"{where}.refusal: only null (a refusal is not text for the model to read)",
                              f"{where}.refusal")
        if message.content is None:
            if message.role != "assistant":
                raise bad_request(f"{where}.content is required (null only for an assistant message)",
                                  f"{where}.content", code="missing_field")
            continue
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                check_part(part, f"{where}.content.{j}")


def check_part(part: dict, where: str) -> None:
    kind = part.get("type")
    if kind != "text":
        if isinstance(kind, str):
            raise APIError(400, f"{where}.type {kind!r} is not supported: this is a character-level text model; "
                                "send text parts ({\"type\": \"text\", \"text\": ...}) or a string",
                           param=f"{where}.type", code="unsupported_content")
        raise bad_request(f"{where}.type is required: \"text\"", f"{where}.type")
    if not isinstance(part.get("text"), str):
        raise bad_request(f"{where}.text must be a string", f"{where}.text")
    extra = sorted(set(part) - {"type", "text"})
    if extra:
        raise bad_request(f"unknown field {where}.{extra[0]!r} in a text part", f"{where}.{extra[0]}",
                          code="unknown_field")


def message_text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part["text"] for part in message.content)  # as vLLM joins text parts


class ChatCompletionRequest(Request):
    """POST /v1/chat/completions. A token is a character; the reply is what the model writes after the
    conversation, as the chat template wrote it, up to the template's stop strings or the request's."""

    model: str = Field(description="a model id from GET /v1/models")
    messages: list[ChatMessage] = Field(description="the conversation, oldest first; at least one message")
    max_completion_tokens: int | None = Field(None, ge=1, description=(
        "characters to generate per choice at most; default: until a stop string, at most the gateway's "
        "CHARLM_MAX_TOKENS"))
    max_tokens: int | None = Field(None, ge=1, description="OpenAI's older name for max_completion_tokens")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOP_K)] = Field(
        0, description="vLLM's: keep the k likeliest characters; 0 or -1 = off")
    min_p: MinP = Field(0.0, description="vLLM's: keep characters at least min_p times as likely as the likeliest")
    seed: Seed | None = Field(None, description="choice i draws from seed + i; same seed, same reply")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings that end a reply (not "
                                                           "included), besides the chat template's own")
    n: int = Field(1, ge=1, description="choices")
    logprobs: bool = Field(False, description="return each character's log-probability (the model's own "
                                              "distribution, before temperature, top_k, top_p and min_p)")
    top_logprobs: Logprobs | None = Field(None, description=(
        f"0 ... {MAX_LOGPROBS}: with `logprobs`, the likeliest characters at each position with theirs"))
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None
    # Accepted only at their neutral values (schemas.PENALTIES says why).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # What a character model cannot do: accepted only empty (or as their "none").
    tools: list | None = Field(None, description="not supported; only null or []")
    tool_choice: str | dict | None = Field(None, description="not supported; only null, \"none\" or \"auto\"")
    functions: list | None = Field(None, description="not supported; only null or []")
    function_call: str | dict | None = Field(None, description="not supported; only null, \"none\" or \"auto\"")
    parallel_tool_calls: bool | None = Field(None, description="accepted; without tools it means nothing")
    response_format: dict | None = Field(None, description="only {\"type\": \"text\"}: the model cannot follow a "
                                                           "JSON schema")

    @field_validator("messages")
    @classmethod
    def some_messages(cls, value):
        if not value:
            raise ValueError("must hold at least one message")
        return value

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def max_tokens_within_limit(cls, value, info: ValidationInfo):
        return at_most(value, info, "max_tokens")

    @field_validator("n")
    @classmethod
    def n_within_limit(cls, value, info: ValidationInfo):
        return at_most(value, info, "max_n")

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, value):
        return check_stop(value)

    @model_validator(mode="after")
    def supported(self):
        refuse_penalties(self)
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported: {TOOLS_REASON}. Leave it out", param=name,
                               code="unsupported_parameter")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                raise APIError(400, f"{name} is not supported: {TOOLS_REASON}. Leave it out (or \"none\")",
                               param=name, code="unsupported_parameter")
        if self.response_format is not None and self.response_format != {"type": "text"}:
            kind = self.response_format.get("type")
            raise APIError(400, f"response_format {kind!r} is not supported: a character model cannot be held to a "
                                "format or a JSON schema; only {\"type\": \"text\"}", param="response_format",
                           code="unsupported_parameter")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise bad_request(f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                              f"({self.max_completion_tokens}) differ; give one", "max_tokens")
        check_messages(self.messages)
        return self

    def sampling(self) -> SamplingSettings:
        """How every choice samples; choice i then draws from seed + i (`with_seed`)."""
        return SamplingSettings(temperature=self.temperature, top_k=max(self.top_k, 0), top_p=self.top_p,
                                min_p=self.min_p, logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
                                seed=self.seed if self.seed is not None else 0)

    def max_chars(self, default: int) -> int:
        given = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return given if given is not None else default

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# --- replies ---------------------------------------------------------------------------------------------
class ChatTopLogprob(BaseModel):
    token: str = Field(description="a character")
    logprob: float
    bytes: list[int] = Field(description="the character's UTF-8 bytes")


class ChatTokenLogprob(BaseModel):
    token: str = Field(description="the generated character")
    logprob: float | None = Field(description="natural log of its probability under the model's own distribution "
                                              "(before temperature and the filters)")
    bytes: list[int] = Field(description="the character's UTF-8 bytes")
    top_logprobs: list[ChatTopLogprob] = Field(description="the `top_logprobs` likeliest characters at this "
                                                           "position, likeliest first")


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(description="one entry per character of the reply (or of the chunk)")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: a stop string (the template's, e.g. the blank line before the next speaker, or the "
                    "request's) ended the reply; length: max_completion_tokens did")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage = Field(description="prompt_tokens: the characters of the conversation as the template wrote it")
    text_changes: TextChanges | None = None


class ChatDelta(BaseModel):
    """A choice's first chunk has role "assistant" and content ""; then content pieces; its last chunk is empty."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """With `stream`, each server-sent event; with stream_options.include_usage, a last one with no choices and
    the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    text_changes: TextChanges | None = None
