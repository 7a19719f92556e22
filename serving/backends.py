"""Choosing the backend (CHARLM_BACKEND: `local` or `tfserving`), attaching it to the app, and finding the
model a request asks for. The backends themselves (backend.py, local_backend.py, tfserving_backend.py)
know nothing of Flask or HTTP."""
from __future__ import annotations

import logging

from flask import Flask, current_app

from model_interface.errors import ModelInterfaceError
from serving.backend import Backend, ServedModel
from serving.errors import UnknownModel
from serving.local_backend import LocalBackend
from serving.tfserving_backend import TFServingBackend

log = logging.getLogger(__name__)


def make_backend(settings) -> Backend:
    if settings.backend == "tfserving":
        return TFServingBackend(settings)
    return LocalBackend(settings)


def init_app(app: Flask, settings) -> None:
    backend = make_backend(settings)
    try:
        backend.refresh()  # the first load happens at start-up, not in the first user's request
    except ModelInterfaceError as e:
        log.warning("starting without a model: %s", e)
    app.extensions["charlm.backend"] = backend


def current_backend() -> Backend:
    return current_app.extensions["charlm.backend"]


def resolve_model(name: str | None) -> ServedModel:
    """The served model if `name` names it (or is None); otherwise UnknownModel (a 404, as OpenAI answers)."""
    backend = current_backend()
    if name is not None and name != backend.name:
        raise UnknownModel(f"the model {name!r} does not exist; GET /v1/models lists the served model")
    return backend.model()
