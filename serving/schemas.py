"""Request and response bodies as pydantic models: requests are validated strictly (wrong types, unknown
fields and out-of-range values become 400s naming the field); responses document what the routes send and
feed /openapi.json."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from model_interface.signatures import (MAX_LOGPROBS, MAX_TOP_K, Logprobs, MinP, SamplingSettings, Seed, Temperature,
                                        TopK, TopP)
from serving.errors import APIError, bad_request
from serving.request_body import load_json

State = Annotated[str, Field(description="opaque continuation state returned by an earlier call")]
ACTIVATION_KINDS = ("tanh_cell", "cell", "hidden", "input_gate", "forget_gate", "cell_candidate", "output_gate")
MAX_STOP = 4  # stop strings per request, as OpenAI allows

# How a text with characters outside the model's vocabulary is read (serving/unknown_chars.py); every route that
# takes text has these two fields.
UNKNOWN_CHAR_ACTIONS = ("error", "drop", "replace")
UnknownChars = Annotated[Literal[UNKNOWN_CHAR_ACTIONS] | None, Field(
    description="characters outside the model's vocabulary: `error` (a 400 naming them), `drop` them, or "
                "`replace` them by `replacement_char`; the reply's `text_changes` says what was changed. "
                "Default: the server's CHARLM_UNKNOWN_CHARS (`error` unless set). `\\r\\n` is always read as "
                "`\\n` when the vocabulary has no `\\r`")]
ReplacementChar = Annotated[Annotated[str, Field(min_length=1, max_length=1)] | None, Field(
    description="the one character (in the model's vocabulary) that `unknown_chars: replace` puts in place of "
                "each unknown one; default: the server's CHARLM_REPLACEMENT_CHAR")]

# Sampling changes that would make the next character depend on more than the recurrent state: refused, each
# with its neutral value (accepted, as OpenAI clients send them) and the reason.
PENALTIES = {
    "presence_penalty": (0.0, "it needs the set of characters generated so far"),
    "frequency_penalty": (0.0, "it needs the counts of the characters generated so far"),
    "repetition_penalty": (1.0, "it needs the characters of the text so far"),
    "logit_bias": ({}, "it needs per-character biases, which the in-graph sampler has no input for"),
}
PENALTY_REASON = ("this model's next-character distribution is a function of its recurrent state alone, and the "
                  "sampler runs inside the exported graph on that distribution")


def limit(info: ValidationInfo, name: str) -> int | None:
    settings = (info.context or {}).get("settings")
    return getattr(settings, name) if settings is not None else None


def at_most(value, info: ValidationInfo, setting: str):
    """A number no larger than the gateway's setting `setting` (None passes)."""
    most = limit(info, setting)
    if most is not None and value is not None and value > most:
        raise ValueError(f"must be at most {most}")
    return value


def at_most_chars(value: str, info: ValidationInfo, setting: str) -> str:
    """A text no longer than the gateway's setting `setting`."""
    most = limit(info, setting)
    if most is not None and len(value) > most:
        raise ValueError(f"at most {most} characters")
    return value


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


def refuse_penalties(request: Request) -> None:
    """A penalty at anything but its neutral value is a 400 saying why it cannot be honoured."""
    for name, (neutral, needs) in PENALTIES.items():
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise APIError(400, f"{name} is not supported: {PENALTY_REASON}; {needs}. Leave it out (or at "
                                f"{neutral!r})", param=name, code="unsupported_parameter")


def check_stop(value: str | list[str] | None):
    """A request's `stop`: a string or up to MAX_STOP strings, none empty."""
    stops = [value] if isinstance(value, str) else value or []
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ValueError(f"must be up to {MAX_STOP} non-empty strings")
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(Request):
    """POST /v1/completions, OpenAI's legacy completions (with vLLM's extra sampling fields). A token is a
    character."""

    model: str = Field(description="a model id from GET /v1/models")
    prompt: str | list[str] = Field("", description="text to continue; a list gives one set of `n` choices each")
    max_tokens: int = Field(16, ge=0, description="characters to generate per choice; 0 with `echo` and "
                                                   "`logprobs` scores the prompt (a log-likelihood)")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOP_K)] = Field(
        0, description="vLLM's: keep the k likeliest characters; 0 or -1 = off")
    min_p: MinP = Field(0.0, description="vLLM's: keep characters at least min_p times as likely as the likeliest")
    seed: Seed | None = None
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings that end a choice (not included)")
    n: int = Field(1, ge=1, description="choices per prompt")
    best_of: int | None = Field(None, ge=1, description="draw this many candidates per prompt and return the `n` "
                                                         "with the highest cumulative log-probability; >= n; not "
                                                         "with `stream`")
    logprobs: Logprobs | None = Field(None, description=(
        f"0 ... {MAX_LOGPROBS}: return each character's log-probability and the `logprobs` likeliest alternatives "
        "(plus the chosen character) in OpenAI's legacy shape; null = none. Log-probabilities are the model's own "
        "distribution, before temperature, top_k, top_p and min_p"))
    echo: bool = Field(False, description="put the prompt in front of each choice's text (with `logprobs`, its "
                                          "characters' log-probabilities; the first one is null)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None
    # Accepted only at their neutral values (PENALTIES says why).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = Field(None, description="not supported (a left-to-right model cannot fill in); only "
                                                 "null or empty")

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
        return at_most(value, info, "max_tokens")

    @field_validator("n", "best_of")
    @classmethod
    def n_within_limit(cls, value, info: ValidationInfo):
        return at_most(value, info, "max_n")

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, value):
        return check_stop(value)

    @model_validator(mode="after")
    def supported_combinations(self):
        refuse_penalties(self)
        if self.suffix:
            raise APIError(400, "suffix is not supported: the model only continues a text left to right; leave "
                                "it out", param="suffix", code="unsupported_parameter")
        if self.best_of is not None:
            if self.best_of < self.n:
                raise bad_request(f"best_of ({self.best_of}) must be at least n ({self.n})", "best_of")
            if self.stream and self.best_of > self.n:
                raise APIError(400, "best_of cannot be used with stream: the best candidates are known only "
                                    "when all are complete", param="best_of", code="unsupported_parameter")
        return self

    def sampling(self) -> SamplingSettings:
        """How every choice samples; choice i of the request then draws from seed + i (`with_seed`)."""
        return SamplingSettings(temperature=self.temperature, top_k=max(self.top_k, 0), top_p=self.top_p,
                                min_p=self.min_p, logprobs=self.logprobs or 0,
                                seed=self.seed if self.seed is not None else 0)

    @property
    def candidates(self) -> int:
        """Streams per prompt: best_of when it asks for more than n."""
        return max(self.best_of or 0, self.n)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def prompt_params(self) -> list[str]:
        """The parameter each prompt is named by in messages."""
        return ["prompt"] if isinstance(self.prompt, str) else [f"prompt.{i}" for i in range(len(self.prompt))]

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
    min_p: MinP = 0.0
    seed: Seed | None = Field(None, description="defaults to the seed kept in `state`, else a random one")
    stream: bool = False
    state: State | None = None
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None
    # Accepted only at their neutral values (PENALTIES says why), so a client written for vLLM hears the reason.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def no_penalties(self):
        refuse_penalties(self)
        return self

    def sampling(self) -> SamplingSettings:
        """The seed is the route's to settle (this one, else the one kept in `state`, else a random one)."""
        return SamplingSettings(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                                seed=self.seed if self.seed is not None else 0)

    @field_validator("prompt")
    @classmethod
    def prompt_within_limit(cls, value, info: ValidationInfo):
        return at_most_chars(value, info, "max_prompt_chars")

    @field_validator("max_chars")
    @classmethod
    def max_chars_within_limit(cls, value, info: ValidationInfo):
        return at_most(value, info, "max_tokens")


class ScoreRequest(Request):
    """POST /v1/score: how well the model predicts a text."""

    model: str | None = None
    text: str = Field(min_length=1)
    state: State | None = Field(None, description="score the text as the continuation of this state")
    per_char: bool = Field(False, description="also return each character's log2 probability")
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None

    @field_validator("text")
    @classmethod
    def text_within_limit(cls, value, info: ValidationInfo):
        return at_most_chars(value, info, "max_score_chars")


class ActivationsRequest(Request):
    """POST /v1/activations: one layer's per-character values, for the visualisation page."""

    model: str | None = None
    text: str = Field(min_length=1)
    layer: int | None = Field(None, ge=0, description="0 = the lowest layer; defaults to the top one")
    kind: Literal[ACTIVATION_KINDS] = Field(
        "tanh_cell", description="tanh_cell is tanh(c), the paper's Figure 2; the gates are LSTM only")
    state: State | None = None
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None

    @field_validator("text")
    @classmethod
    def text_within_limit(cls, value, info: ValidationInfo):
        return at_most_chars(value, info, "max_activation_chars")


class TokenizeRequest(Request):
    """POST /tokenize, vLLM's: a text's token ids. A token is a character; its id is its index in the vocabulary
    (GET /v1/models lists it)."""

    model: str | None = None
    prompt: str = Field(description="the text")
    add_special_tokens: bool = Field(True, description="vLLM's; this model has no special tokens, so no effect")
    return_token_strs: bool = Field(False, description="also return each token as its character")
    unknown_chars: UnknownChars = None
    replacement_char: ReplacementChar = None

    @field_validator("prompt")
    @classmethod
    def prompt_within_limit(cls, value, info: ValidationInfo):
        return at_most_chars(value, info, "max_prompt_chars")


class DetokenizeRequest(Request):
    """POST /detokenize, vLLM's: token ids (vocabulary indices) back to text."""

    model: str | None = None
    tokens: list[int] = Field(description="vocabulary indices, 0 ... vocab_size - 1")


# --- responses -------------------------------------------------------------------------------------------
class TextChanges(BaseModel):
    """What was changed in a request's text(s) before the model read them; null when nothing was."""

    action: Literal["drop", "replace"] | None = Field(
        description="what was done to the characters outside the vocabulary (null: there were none)")
    chars: list[str] = Field(description="the distinct characters outside the vocabulary, sorted")
    count: int = Field(description="how many characters were dropped or replaced")
    replacement_char: str | None = Field(description="what replaced them (action `replace`)")
    crlf: int = Field(description="how many `\\r\\n` were read as `\\n` (the vocabulary has no `\\r`)")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions log-probabilities, one entry per character (a token is a character)."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(
        description="natural log of each character's probability under the model's own distribution (before "
                    "temperature and the filters); null for a fresh text's first character, which has nothing "
                    "before it")
    top_logprobs: list[dict[str, float] | None] = Field(
        description="the `logprobs` likeliest characters at each position with their log-probabilities, plus "
                    "the chosen character if it is not among them; null where token_logprobs is")
    text_offset: list[int] = Field(description="each character's offset in the returned text (with echo, the "
                                               "prompt included), counted in characters")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
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
    usage: Usage | None = Field(None, description="with best_of, every candidate's characters count")
    text_changes: TextChanges | None = None


class ModelLimits(BaseModel):
    """What one request may ask of this gateway (its CHARLM_* settings)."""

    max_tokens: int = Field(description="characters one request may generate per choice")
    max_prompt_chars: int = Field(description="characters per prompt (and per /tokenize text)")
    max_score_chars: int = Field(description="characters /v1/score takes")
    max_activation_chars: int = Field(description="characters /v1/activations takes")
    max_n: int = Field(description="`n` and `best_of`")
    max_logprobs: int = Field(description="`logprobs`")
    max_stop: int = Field(description="stop strings")
    max_streams: int = Field(description="concurrent generations per worker (prompts x n or best_of, too)")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    version: int = Field(description="the version being served")
    versions: list[int] = Field(description="versions present (local backend) or served (tfserving)")
    backend: Literal["local", "tfserving"]
    max_model_len: int = Field(description="vLLM's: the characters a prompt and its generated text may hold "
                                           "together (the recurrent model itself has no context limit)")
    vocab: list[str] = Field(description="the vocabulary: token id i is character vocab[i]")
    vocab_size: int
    state_size: int = Field(description="floats in the recurrent state (the `state` of /v1/generate)")
    precision: Literal["fp32", "bf16"] = Field(
        description="how the version stores the weights generation reads (export --precision): bf16 copies, or fp32; "
                    "the state, the softmax and every input and output are fp32 either way")
    cell: Literal["lstm", "gru", "rnn"]
    num_layers: int
    hidden_size: int
    limits: ModelLimits
    chat_template: str | None = Field(
        description="the chat template (Jinja2) /v1/chat/completions writes messages with: CHARLM_CHAT_TEMPLATE's if "
                    "set, else the version's own; null: the version has none, and chat is refused")
    chat_stop: list[str] = Field(default_factory=list,
                                 description="the strings that end a chat reply (CHARLM_CHAT_STOP's if set, else the "
                                             "template's), besides a request's own `stop`")


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
    text_changes: TextChanges | None = None


class Score(BaseModel):
    model: str
    version: int
    characters: int
    bits_per_char: float
    log2_probs: list[float] | None = None
    state: State
    text_changes: TextChanges | None = None


class Activations(BaseModel):
    model: str
    version: int
    layer: int
    kind: str
    chars: list[str]
    values: list[list[float]] = Field(description="one row per character, hidden_size values each")
    state: State
    text_changes: TextChanges | None = None


class Tokenized(BaseModel):
    """The reply of POST /tokenize, vLLM's TokenizeResponse."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None
    text_changes: TextChanges | None = None


class Detokenized(BaseModel):
    """The reply of POST /detokenize, vLLM's DetokenizeResponse."""

    prompt: str


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
    data = load_json(raw)
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
