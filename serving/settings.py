"""The gateway's configuration: CHARLM_* environment variables, validated once at start-up."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from flask import current_app
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every field is read from CHARLM_<NAME> (case-insensitive); `create_app(config)` overrides by field name."""

    model_config = SettingsConfigDict(env_prefix="CHARLM_", extra="forbid", frozen=True)

    backend: Literal["local", "tfserving"] = "local"
    # Integer version subdirectories (TF Serving's layout); the newest complete one is served.
    model_dir: Path = Path("exported_models/charlm")
    # The name clients ask for and TF Serving's model_spec.name; empty means model_dir's last component.
    model_name: str = ""
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
    max_body_bytes: int = Field(1 << 20, ge=1024)
    retry_after_s: int = Field(1, ge=1)
    # Comma-separated; empty means no authentication.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    # Continuous batching: a new stream's first call generates first_chunk characters (low time to first
    # character); each later call doubles it up to max_chunk (fewer calls, less per-call overhead).
    first_chunk: int = Field(4, ge=1, le=4096)
    max_chunk: int = Field(64, ge=1, le=4096)
    # A long prompt is fed in pieces so it cannot stall the other streams of the batch for long.
    prompt_chunk: int = Field(256, ge=1)
    max_batch: int = Field(64, ge=1, description="rows in one backend call")
    # A stream that receives nothing for this long ends with an error instead of hanging its thread.
    stream_idle_timeout_s: float = Field(120.0, gt=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def split_keys(cls, value):
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

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
