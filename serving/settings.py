"""The gateway's configuration: CHARLM_* environment variables, validated once at start-up."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from flask import current_app
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_interface.chat import ChatTemplate

# What a chat template is rendered with once at start-up, to see that it parses and renders (its characters are
# checked against a version's vocabulary later: serving/routes_chat.py).
PROBE_MESSAGES = [{"role": role, "content": "text"} for role in ("system", "user", "assistant")]


class Settings(BaseSettings):
    """Every field is read from CHARLM_<NAME> (case-insensitive); `create_app(config)` overrides by field name."""

    model_config = SettingsConfigDict(env_prefix="CHARLM_", extra="forbid", frozen=True)

    backend: Literal["local", "tfserving"] = "local"
    # Integer version subdirectories (TF Serving's layout); the newest complete one is served.
    model_dir: Path = Path("exported_models/charlm")
    # The name clients ask for and TF Serving's model_spec.name; empty means model_dir's last component.
    model_name: str = ""
    # A gRPC target. With several TF Serving replicas, name all of them: in a cluster
    # `dns:///charlm-tfserving-grpc.<namespace>.svc.cluster.local:8500`, a headless Service (an address per ready pod)
    # that the channel's round_robin policy spreads calls over (model_interface/client.py); a ClusterIP Service's
    # one address would pin all of a worker's calls to one pod. `ipv4:HOST:PORT,HOST:PORT` lists addresses directly.
    tfserving_address: str = "127.0.0.1:8500"
    # TF Serving version label (e.g. "stable", from its model config) to look up the version to serve; empty
    # means the newest it serves. Calls are then pinned to that version's number.
    tfserving_version_label: str = ""
    # The deadline on every gRPC call: a chunk of a large batch is well under a second.
    tfserving_timeout_s: float = Field(10.0, gt=0)
    # How often a request may trigger a look for a newer version (in the background).
    model_poll_s: float = Field(5.0, ge=0)

    max_tokens: int = Field(8192, ge=1, description="characters one request may ask for")
    max_prompt_chars: int = Field(20_000, ge=1)
    # Scoring runs the whole text through the model in one call: ~0.7 ms a character for 2x512 on 2 cores.
    max_score_chars: int = Field(5000, ge=1)
    # Activations are hidden_size floats per character: 1,000 characters of a 512-wide layer is ~4 MB of JSON.
    max_activation_chars: int = Field(1000, ge=1)
    max_n: int = Field(8, ge=1, description="completions one request may ask for")
    # Per worker: each stream holds one gunicorn thread for its duration.
    max_streams: int = Field(64, ge=1)
    # Past max_streams a request waits for slots, first come first served, in a queue of at most max_queued
    # requests, for at most max_queue_wait_s; then a 429 (too_many_streams). A full queue is a 429 at once
    # (queue_full); 0 for either: no queue, a 429 at once. Each waiting request holds a gunicorn thread
    # (gunicorn.conf.py counts them in `threads`).
    max_queued: int = Field(8, ge=0)
    max_queue_wait_s: float = Field(2.0, ge=0)
    # On SIGTERM, streams still running after this long end with an error event (server_shutting_down), so
    # none is cut by gunicorn's kill at graceful_timeout; capped at graceful_timeout - 5 (gunicorn.conf.py).
    shutdown_grace_s: float = Field(25.0, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    retry_after_s: int = Field(1, ge=1)
    # Comma-separated; empty means no authentication. When set, every route that computes needs one (serving/auth.py).
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Comma-separated secrets that sign continuation states (at least 16 bytes each, checked at start-up): the
    # first signs, all verify, so a secret is rotated by putting a new one first (serving/state_token.py). Every
    # replica of a deployment needs the same list; empty means a random secret per process (a warning at start-up).
    state_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    # Continuous batching: a new stream's first call generates first_chunk characters (low time to first
    # character); each later call doubles it up to max_chunk (fewer calls, less per-call overhead).
    first_chunk: int = Field(4, ge=1, le=4096)
    max_chunk: int = Field(64, ge=1, le=4096)
    # A long prompt is fed in pieces so it cannot stall the other streams of the batch for long: a piece costs its
    # batch-mates as many steps as it has characters, so it is no longer than max_chunk's default.
    prompt_chunk: int = Field(64, ge=1)
    # A call that feeds a prompt piece gives the streams already running beside it as many characters as the piece
    # has (they wait that many steps anyway): throughput. True keeps a call holding a stream's first characters
    # to the smallest chunk instead: its first character sooner, at less throughput (docs/serving.md has the
    # measured trade-off: p50 0.88 s against 1.71 s to the first character, 1,072 against 2,809 characters/s).
    newcomer_first: bool = False
    max_batch: int = Field(64, ge=1, description="rows in one backend call")
    # A stream that receives nothing for this long ends with an error instead of hanging its thread.
    stream_idle_timeout_s: float = Field(120.0, gt=0)
    # How often a non-streaming request looks whether its client has hung up (serving/disconnect.py).
    disconnect_check_s: float = Field(0.25, gt=0)
    # Characters outside the model's vocabulary in a request's text: `error` (a 400 naming them), `drop` them, or
    # `replace` them by replacement_char (checked against the model's vocabulary when used). A request's
    # `unknown_chars` and `replacement_char` fields override these (serving/unknown_chars.py).
    unknown_chars: Literal["error", "drop", "replace"] = "error"
    replacement_char: str = Field(" ", min_length=1, max_length=1)
    # A stream waiting this long for its next event sends an SSE comment, so proxies keep the connection; 0 = never.
    sse_keepalive_s: float = Field(15.0, ge=0)
    # Comma-separated browser origins (scheme://host[:port]) allowed to call the API cross-origin, or "*" for any;
    # empty (the default) means no CORS headers at all (serving/cors.py).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # /v1/chat/completions (serving/routes_chat.py). A Jinja2 file used in place of every version's own chat template
    # (model_interface/chat.py: `messages`, `add_generation_prompt`; HF's chat-template variables). Read and rendered
    # once here (a file that cannot be read or rendered stops the gateway), and checked against the vocabulary of the
    # version loaded at start-up (one that cannot write it stops the gateway) and of any later version when it is
    # first used for chat (a 503 naming the characters, never a 500). Empty: each version's own template.
    chat_template: Path | None = None
    # The strings that end a chat reply, as a JSON list of strings (`["\n\n"]`: JSON, because stop strings are mostly
    # newlines, which a comma-separated list could not write, and may hold commas). Replaces the version's own
    # (`chat_stop` in its metadata) or, with chat_template, is the template's. Unset: the version's stop strings with
    # its own template, none with chat_template; `[]`: none.
    chat_stop: Annotated[tuple[str, ...] | None, NoDecode] = None
    _chat_source: str | None = PrivateAttr(None)  # chat_template's text, read once

    @field_validator("chat_template", mode="before")
    @classmethod
    def empty_template_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("chat_stop", mode="before")
    @classmethod
    def stop_list(cls, value):
        if value is None:
            return None
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError('must be a JSON list of strings, e.g. ["\\n\\n"]') from None
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
            raise ValueError('must be a JSON list of non-empty strings, e.g. ["\\n\\n"]')
        return tuple(value)

    @model_validator(mode="after")
    def read_chat_template(self):
        if self.chat_template is None:
            return self
        where = f"CHARLM_CHAT_TEMPLATE (chat_template) {self.chat_template}"
        try:
            source = self.chat_template.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 ({e})") from None
        try:
            ChatTemplate(source).render(PROBE_MESSAGES, add_generation_prompt=True)
        except Exception as e:  # a Jinja2 error, or whatever else the template's own code raised
            raise ValueError(f"{where}: {e}") from None
        self._chat_source = source
        return self

    @property
    def chat_override(self) -> ChatTemplate | None:
        """CHARLM_CHAT_TEMPLATE's template with CHARLM_CHAT_STOP's stop strings; None when not set."""
        if self._chat_source is None:
            return None
        return ChatTemplate(self._chat_source, self.chat_stop or ())

    @field_validator("cors_origins", mode="before")
    @classmethod
    def split_origins(cls, value):
        if isinstance(value, str):
            value = [origin.strip() for origin in value.split(",") if origin.strip()]
        origins = tuple(str(origin).strip().rstrip("/").lower() for origin in value)
        bad = [o for o in origins if o != "*" and not re.fullmatch(r"https?://[^/?#\s]+", o)]
        if bad:
            raise ValueError(f"not an origin (scheme://host[:port], or *): {', '.join(bad)}")
        return origins

    @field_validator("api_keys", mode="before")
    @classmethod
    def split_keys(cls, value):
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("state_secrets", mode="before")
    @classmethod
    def split_secrets(cls, value):
        if isinstance(value, str):
            value = [secret.strip() for secret in value.split(",") if secret.strip()]
        return value  # lengths are checked at start-up by serving/state_token.py: pydantic's errors repeat the input

    @model_validator(mode="after")
    def chunks_in_order(self):
        if self.max_chunk < self.first_chunk:
            raise ValueError(f"max_chunk ({self.max_chunk}) must be at least first_chunk ({self.first_chunk})")
        return self

    @property
    def served_name(self) -> str:
        return self.model_name or self.model_dir.resolve().name


def current_settings() -> Settings:
    return current_app.config["CHARLM"]
