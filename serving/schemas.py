"""Request and response bodies as pydantic models: requests are validated strictly (wrong types, unknown
fields and out-of-range values become 400s naming the field); responses document what the routes send and
feed /openapi.json."""
from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from model_interface.signatures import SamplingSettings, Seed, Temperature, TopK, TopP
from serving.errors import APIError, bad_request

State = Annotated[str, Field(description="opaque continuation state returned by an earlier call")]
ACTIVATION_KINDS = ("tanh_cell", "cell", "hidden", "input_gate", "forget_gate", "cell_candidate", "output_gate")


def limit(info: ValidationInfo, name: str) -> int | None:
    settings = (info.context or {}).get("settings")
    return getattr(settings, name) if settings is not None else None


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def null_means_default(cls, value, info: ValidationInfo):
        # OpenAI clients send `null` for "not given"; the default applies then, as OpenAI's API does.
        field = cls.model_fields[info.field_name]
        if value is None and not field.is_required():
            return field.get_default(call_default_factory=True)
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(Request):
    """POST /v1/completions, OpenAI's legacy completions. A token is a character."""

    model: str = Field(description="a model id from GET /v1/models")
    prompt: str | list[str] = Field("", description="text to continue; a list gives one set of `n` choices each")
    max_tokens: int = Field(16, ge=0, description="characters to generate per choice")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end a choice (not included)")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    echo: bool = Field(False, description="put the prompt in front of each choice's text")
    # OpenAI parameters that mean nothing for this model: accepted only at their neutral values.
    best_of: int | None = None
    logprobs: int | None = None
    logit_bias: dict[str, int] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def prompt_within_limits(cls, value, info: ValidationInfo):
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("must be a string or a non-empty list of strings")
        most = limit(info, "max_prompt_chars")
        if most is not None and any(len(p) > most for p in prompts):
            raise ValueError(f"at most {most} characters per prompt")
        return value

    @field_validator("max_tokens")
    @classmethod
    def max_tokens_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_tokens")
        if most is not None and value > most:
            raise ValueError(f"must be at most {most}")
        return value

    @field_validator("n")
    @classmethod
    def n_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_n")
        if most is not None and value > most:
            raise ValueError(f"must be at most {most}")
        return value

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("must be up to 4 non-empty strings")
        return value

    @model_validator(mode="after")
    def neutral_values_only(self):
        unsupported = {"logprobs": self.logprobs is not None, "suffix": bool(self.suffix),
                       "logit_bias": bool(self.logit_bias),
                       "presence_penalty": self.presence_penalty not in (None, 0),
                       "frequency_penalty": self.frequency_penalty not in (None, 0),
                       "best_of": self.best_of not in (None, self.n)}
        for name, used in unsupported.items():
            if used:
                raise APIError(400, f"{name} is not supported by this server; leave it out", param=name,
                               code="unsupported_parameter")
        return self

    def sampling(self) -> SamplingSettings:
        """How every choice samples; choice i of the request then draws from seed + i (`with_seed`)."""
        return SamplingSettings(temperature=self.temperature, top_p=self.top_p,
                                seed=self.seed if self.seed is not None else 0)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class GenerateRequest(Request):
    """POST /v1/generate: native generation with a continuation state."""

    model: str | None = Field(None, description="defaults to the served model")
    prompt: str = Field("", description="text to consume first; may be empty when `state` is given")
    max_chars: int = Field(200, ge=0, description="characters to generate")
    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    seed: Seed | None = Field(None, description="defaults to the seed kept in `state`, else a random one")
    stream: bool = False
    state: State | None = None

    def sampling(self) -> SamplingSettings:
        """The seed is the route's to settle (this one, else the one kept in `state`, else a random one)."""
        return SamplingSettings(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                seed=self.seed if self.seed is not None else 0)

    @field_validator("prompt")
    @classmethod
    def prompt_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_prompt_chars")
        if most is not None and len(value) > most:
            raise ValueError(f"at most {most} characters")
        return value

    @field_validator("max_chars")
    @classmethod
    def max_chars_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_tokens")
        if most is not None and value > most:
            raise ValueError(f"must be at most {most}")
        return value


class ScoreRequest(Request):
    """POST /v1/score: how well the model predicts a text."""

    model: str | None = None
    text: str = Field(min_length=1)
    state: State | None = Field(None, description="score the text as the continuation of this state")
    per_char: bool = Field(False, description="also return each character's log2 probability")

    @field_validator("text")
    @classmethod
    def text_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_score_chars")
        if most is not None and len(value) > most:
            raise ValueError(f"at most {most} characters")
        return value


class ActivationsRequest(Request):
    """POST /v1/activations: one layer's per-character values, for the visualisation page."""

    model: str | None = None
    text: str = Field(min_length=1)
    layer: int | None = Field(None, ge=0, description="0 = the lowest layer; defaults to the top one")
    kind: Literal[ACTIVATION_KINDS] = Field(
        "tanh_cell", description="tanh_cell is tanh(c), the paper's Figure 2; the gates are LSTM only")
    state: State | None = None

    @field_validator("text")
    @classmethod
    def text_within_limit(cls, value, info: ValidationInfo):
        most = limit(info, "max_activation_chars")
        if most is not None and len(value) > most:
            raise ValueError(f"at most {most} characters")
        return value


# --- responses -------------------------------------------------------------------------------------------
class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """The reply, and with `stream` each server-sent event (then `choices` hold the new characters)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    version: int = Field(description="the version being served")
    versions: list[int] = Field(description="versions present (local backend) or served (tfserving)")
    backend: Literal["local", "tfserving"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Generation(BaseModel):
    """The reply of /v1/generate, and with `stream` each event (`state` only in the last one)."""

    id: str
    object: Literal["generation", "generation.chunk"]
    model: str
    version: int
    text: str
    finish_reason: Literal["length"] | None
    seed: int
    state: State | None = Field(description="pass back with an empty prompt to continue exactly here")


class Score(BaseModel):
    model: str
    version: int
    characters: int
    bits_per_char: float
    log2_probs: list[float] | None = None
    state: State


class Activations(BaseModel):
    model: str
    version: int
    layer: int
    kind: str
    chars: list[str]
    values: list[list[float]] = Field(description="one row per character, hidden_size values each")
    state: State


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    backend: Literal["local", "tfserving"]
    model: str
    version: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    error: ErrorDetail


def parse(model: type[Request], raw: bytes, settings) -> Request:
    """The request body -> a validated model, or an APIError (400) naming what is wrong."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data, strict=True, context={"settings": settings})
    except ValidationError as e:
        problems = e.errors(include_url=False)
        first = problems[0]
        param = where(first["loc"])
        if first["type"] == "extra_forbidden":
            raise bad_request(f"unknown field {param!r}", param, code="unknown_field") from None
        if first["type"] == "missing":
            raise bad_request(f"{param} is required", param, code="missing_field") from None
        # A field of several accepted types reports one problem per type: say them all.
        field = first["loc"][0] if first["loc"] else None
        same = [p for p in problems if p["loc"] and p["loc"][0] == field] or [first]
        message = "; or ".join(f"{where(p['loc'])}: {p['msg'].removeprefix('Value error, ')}" for p in same[:3])
        raise bad_request(message, param) from None


UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def where(loc: tuple) -> str | None:
    """Pydantic's error location as a dotted parameter name, without the union member tags it adds."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in UNION_TAGS or "[" in p))]
    return ".".join(parts) or None
