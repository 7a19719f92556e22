"""What the gateway runs models through, whatever answers: the `Backend` base class and the description of the
version being served. Inputs and outputs are numpy arrays keyed by the signature's names
(model_interface.signatures); versions are TF Serving's integers; failures are model_interface.errors.

The two backends (local_backend.py, tfserving_backend.py) build on this; backends.py picks one and attaches it
to the app. Nothing here knows HTTP.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from model_interface import signatures as sig
from model_interface.client import ModelClient
from model_interface.errors import ModelInterfaceError, ModelUnavailable
from model_interface.metadata import ModelMetadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One version as the gateway serves it: the name clients ask for, its number, and what the version says
    about itself (its metadata, read through its own `metadata` signature)."""

    name: str
    version: int
    metadata: ModelMetadata

    @property
    def state_size(self) -> int:
        return self.metadata.state_size

    @property
    def created(self) -> int:
        """Unix seconds (0 if the version does not say)."""
        return self.metadata.created_unix

    def unknown_chars(self, text: str) -> list[str]:
        return self.metadata.unknown_chars(text)


class Backend:
    """Subclasses implement client(), refresh(), versions(); the rest is shared."""

    kind = ""

    def __init__(self, settings):
        self.settings = settings
        self.name = settings.served_name
        self._model: ServedModel | None = None
        self._refresh_lock = threading.Lock()
        self._last_refresh = float("-inf")  # the first look is never throttled

    def model(self) -> ServedModel:
        """The version new requests go to."""
        if self._model is None:
            raise ModelUnavailable(f"no model version of {self.name!r} is loaded yet")
        return self._model

    def client(self, version: int) -> ModelClient:
        """A client pinned to `version` (VersionNotFound if it is no longer there)."""
        raise NotImplementedError

    def call(self, signature: str, version: int, inputs: dict[str, np.ndarray],
             outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        return self.client(version).call(signature, inputs, outputs)

    def refresh(self) -> None:
        """Look for a newer version and switch new requests to it (blocking)."""
        raise NotImplementedError

    def versions(self) -> list[int]:
        raise NotImplementedError

    def check(self) -> ServedModel:
        """Readiness: a model is loaded and the backend answers a call now."""
        model = self.model()
        self.call(sig.METADATA, model.version, sig.metadata_inputs())
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
            except ModelInterfaceError as e:
                log.warning("looking for a new model version: %s", e)
            except Exception:
                log.exception("looking for a new model version")
            finally:
                self._last_refresh = time.monotonic()
                self._refresh_lock.release()

        threading.Thread(target=run, name="charlm-model-refresh", daemon=True).start()

    def refresh_soon(self) -> None:
        """The served version is gone (TF Serving unloaded it for a newer one): look for what replaced it now, in
        the background, rather than at the next poll, so new requests do not fail meanwhile."""
        self._last_refresh = float("-inf")
        self.maybe_refresh()

    def close(self) -> None:
        pass
