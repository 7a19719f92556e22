"""Probes and metrics, outside authentication: /healthz (the process answers; no backend call), /readyz
(a model is loaded and the backend answers now) and /metrics (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from serving.backends import current_backend
from serving.metrics import CONTENT_TYPE, current_metrics
from serving.schemas import Health, Ready

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(Health(status="ok").model_dump())


@bp.get("/readyz")
def readyz():
    backend = current_backend()
    model = backend.check()  # a failure becomes a 503 (or 504) with the reason (serving/errors.py)
    return jsonify(Ready(status="ready", backend=backend.kind, model=model.name, version=model.version).model_dump())


@bp.get("/metrics")
def metrics():
    return Response(current_metrics().exposition(), mimetype=CONTENT_TYPE)
