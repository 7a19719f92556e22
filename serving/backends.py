"""The one small interface the gateway runs models through, whatever answers: `local` (the SavedModel loaded
in this process) or `tfserving` (TensorFlow Serving over gRPC). Inputs and outputs are numpy arrays keyed
by the signature's names (docs/model-signatures.md); versions are TF Serving's integers."""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from calendar import timegm
from dataclasses import dataclass, field

import numpy as np
from flask import Flask, current_app

from serving.errors import APIError, error_response

log = logging.getLogger(__name__)


class BackendError(Exception):
    status, code = 503, "backend_unavailable"

    def as_api_error(self) -> APIError:
        return APIError(self.status, str(self), code=self.code)


class BackendUnavailable(BackendError):
    """Nothing answered (TF Serving down, no model version yet): retry later."""


class BackendTimeout(BackendError):
    status, code = 504, "backend_timeout"


class BackendRejected(BackendError):
    """The model refused the inputs (INVALID_ARGUMENT): the request was wrong."""
    status, code = 400, "invalid_value"


class VersionGone(BackendUnavailable):
    """A newer version replaced the one a stream was pinned to."""
    code = "version_unloaded"


def rejection_message(error_text: str) -> str:
    """The model's own words from a TensorFlow error: the message of the failed assertion
    ("temperature must be > 0") rather than "Graph execution error:" and a node trace."""
    asserted = re.search(r"assertion failed: \[([^\]]+)\]", error_text)
    if asserted:
        return asserted.group(1)
    lines = [line.strip() for line in error_text.splitlines()
             if line.strip() and not line.strip().startswith(("Graph execution error", "Detected at node"))]
    return lines[0][:500] if lines else "rejected by the model"


@dataclass(frozen=True)
class ModelInfo:
    """What one version says about itself, through its own signatures."""

    name: str
    version: int
    vocab: tuple[str, ...]
    state_size: int
    num_layers: int
    hidden_size: int
    cell: str
    created: int  # unix seconds
    info: dict = field(repr=False, compare=False)
    known: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "known", frozenset(self.vocab))

    @classmethod
    def describe(cls, backend: "Backend", version: int) -> "ModelInfo":
        """Ask the version itself: `metadata` for the vocabulary and state size, and `activations` of one
        character for the shape (layers, hidden size, whether it is an LSTM), which holds even for a model
        whose info JSON says little (benchmark exports)."""
        meta = backend.call("metadata", version, METADATA_REQUEST)
        info = json.loads(meta["info"][0])
        vocab = tuple(c.decode("utf-8") for c in meta["vocab"][0])
        state_size = int(meta["state_size"][0])
        probe = backend.call("activations", version, {"text": np.array([vocab[0]], object),
                                                     "state": np.zeros([1, state_size], np.float32)})
        try:
            created = timegm(time.strptime(info.get("created", ""), "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            created = 0
        return cls(name=backend.name, version=version, vocab=vocab, state_size=state_size,
                   num_layers=probe["hidden"].shape[2], hidden_size=probe["hidden"].shape[3],
                   cell="lstm" if "cell" in probe else info.get("cell", "rnn"), created=created, info=info)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - self.known)


METADATA_REQUEST = {"request": np.zeros([1], np.int32)}


class Backend:
    """Subclasses implement call(), refresh(), versions(); the rest is shared."""

    kind = ""

    def __init__(self, settings):
        self.settings = settings
        self.name = settings.served_name
        self._model: ModelInfo | None = None
        self._refresh_lock = threading.Lock()
        self._last_refresh = float("-inf")  # the first look is never throttled

    def model(self) -> ModelInfo:
        """The version new requests go to."""
        if self._model is None:
            raise BackendUnavailable(f"no model version of {self.name!r} is loaded yet")
        return self._model

    def call(self, signature: str, version: int | None, inputs: dict[str, np.ndarray],
             outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def refresh(self) -> None:
        """Look for a newer version and switch new requests to it (blocking)."""
        raise NotImplementedError

    def versions(self) -> list[int]:
        raise NotImplementedError

    def check(self) -> ModelInfo:
        """Readiness: a model is loaded and the backend answers a call now."""
        model = self.model()
        self.call("metadata", model.version, METADATA_REQUEST)
        return model

    def maybe_refresh(self) -> None:
        """At most every model_poll_s, look for a new version in a background thread: requests never wait
        for a model to load, and an idle worker does no polling at all."""
        now = time.monotonic()
        if now - self._last_refresh < self.settings.model_poll_s or not self._refresh_lock.acquire(blocking=False):
            return
        self._last_refresh = now

        def run():
            try:
                self.refresh()
            except BackendError as e:
                log.warning("looking for a new model version: %s", e)
            except Exception:
                log.exception("looking for a new model version")
            finally:
                self._last_refresh = time.monotonic()
                self._refresh_lock.release()

        threading.Thread(target=run, name="charlm-model-refresh", daemon=True).start()

    def close(self) -> None:
        pass


def make_backend(settings) -> Backend:
    if settings.backend == "tfserving":
        from serving.tfserving_backend import TFServingBackend

        return TFServingBackend(settings)
    from serving.local_backend import LocalBackend

    return LocalBackend(settings)


def init_app(app: Flask, settings) -> None:
    backend = make_backend(settings)
    try:
        backend.refresh()  # the first load happens at start-up, not in the first user's request
    except BackendError as e:
        log.warning("starting without a model: %s", e)
    app.extensions["charlm.backend"] = backend

    @app.errorhandler(BackendError)
    def backend_failed(error: BackendError):
        return error_response(error.as_api_error())


def current_backend() -> Backend:
    return current_app.extensions["charlm.backend"]


def resolve_model(name: str | None) -> ModelInfo:
    """The served model if `name` names it (or is None); otherwise a 404, as OpenAI answers."""
    backend = current_backend()
    if name is not None and name != backend.name:
        raise APIError(404, f"the model {name!r} does not exist; GET /v1/models lists the served model",
                       param="model", code="model_not_found")
    return backend.model()
