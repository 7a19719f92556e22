"""A version's metadata, `assets.extra/charlm.json` (also inside the graph, answered by the `metadata`
signature): one typed value, read one way everywhere. A version carries its own vocabulary, sizes and training
facts, so nothing can pair a model with the wrong vocabulary."""
from __future__ import annotations

import calendar
import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_interface.errors import MetadataError
from model_interface.versions import EXTRA_DIR, METADATA_FILE

CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_dir: str | None = None  # the training run it was exported from (None: random weights)
    checkpoint: Literal["best", "last", "untrained"] = "best"
    weights_sha256: str | None = None  # what `export --if-changed` compares


class ModelMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")  # newer exports may add facts; old readers keep them

    model_name: str
    vocab: tuple[str, ...] = Field(min_length=1)  # Unicode code points, in id order
    cell: Literal["lstm", "gru", "rnn"]
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    embedding_size: int = Field(ge=1)
    state_size: int = Field(ge=2)
    max_chars_per_call: int = Field(ge=1)
    signatures: tuple[str, ...]
    val_fraction: float = Field(0.1, gt=0, lt=1)  # validation is the last val_fraction of the corpus
    corpus_sha256: str | None = None
    corpus_chars: int | None = None
    val_loss: float | None = None  # nats/char of the exported weights on the validation split
    val_bpc: float | None = None
    config: dict = Field(default_factory=dict)  # the training config, as training wrote it
    source: Source = Field(default_factory=Source)
    # The chat template (Jinja2, model_interface.chat) and the strings that end a reply; None: no chat.
    chat_template: str | None = None
    chat_stop: tuple[str, ...] = ()
    # How the weights generation reads are stored and multiplied (training/export.py --precision); the
    # signatures, the state and the log-probabilities are float32 either way. Versions before it: fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    created: str = ""  # UTC, CREATED_FORMAT
    tensorflow: str = ""

    # --- derived facts ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def states_per_layer(self) -> int:
        return 2 if self.cell == "lstm" else 1

    @property
    def state_layout(self) -> str:
        parts = "h, c" if self.cell == "lstm" else "h"
        return (f"per layer {parts} ({self.hidden_size} each), then the position (characters consumed), "
                "which keys the sampler")

    @property
    def created_unix(self) -> int:
        try:
            return calendar.timegm(time.strptime(self.created, CREATED_FORMAT))
        except ValueError:
            return 0

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of `text` outside the vocabulary, sorted."""
        return sorted(set(text) - set(self.vocab))

    def split(self, text: str) -> tuple[str, str]:
        """(train, validation) exactly as training cut the corpus: validation is the end."""
        n_train = int(len(text) * (1.0 - self.val_fraction))
        return text[:n_train], text[n_train:]

    # --- reading and writing ---------------------------------------------------------------------------
    @staticmethod
    def state_size_for(cell: str, num_layers: int, hidden_size: int) -> int:
        """Per layer h (and c for LSTM), then one column: the position that keys the sampler."""
        return num_layers * (2 if cell == "lstm" else 1) * hidden_size + 1

    def to_json(self) -> str:
        return json.dumps({**self.model_dump(mode="json"), "vocab_size": self.vocab_size,
                           "state_layout": self.state_layout}, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "metadata") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MetadataError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise MetadataError(f"{where}: not a JSON object")
        data = {k: v for k, v in data.items() if k not in ("vocab_size", "state_layout")}  # derived, rewritten
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise MetadataError(f"{where}: {field}: {first['msg']}") from None

    @classmethod
    def read(cls, version_dir: Path) -> "ModelMetadata":
        path = Path(version_dir) / EXTRA_DIR / METADATA_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise MetadataError(f"{path}: cannot be read ({e.strerror or e}); is it an exported charlm version?") from None
        return cls.from_json(text, str(path))

    def write(self, version_dir: Path) -> Path:
        path = Path(version_dir) / EXTRA_DIR / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path
