"""Prometheus metrics (prometheus-client). Under gunicorn every worker writes its values to
PROMETHEUS_MULTIPROC_DIR (set by serving/gunicorn.conf.py) and /metrics adds them up across workers;
without it (tests, a single process) the app's own registry is exposed."""
from __future__ import annotations

import os
import time

from flask import Flask, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PER_CHAR_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        # A registry per app, so apps made in one process (tests) do not collide; in multiprocess mode the
        # values live in the shared directory whatever registry holds the objects.
        self.registry = r = CollectorRegistry()
        self.time_to_first_char = Histogram(
            "charlm_time_to_first_char_seconds", "From request arrival to the first generated character",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_char = Histogram(
            "charlm_inter_char_seconds", "Time between chunks of a stream divided by the chunk's characters",
            ["endpoint"], buckets=PER_CHAR_BUCKETS, registry=r)
        self.chars = Counter("charlm_generated_chars", "Characters generated", registry=r)
        self.active_streams = Gauge("charlm_active_streams", "Streams admitted and not finished (per worker, summed)",
                                    registry=r, multiprocess_mode="livesum")
        self.queue_depth = Gauge("charlm_queue_depth", "Admitted streams not in the current backend call",
                                 registry=r, multiprocess_mode="livesum")
        self.batch_size = Histogram("charlm_batch_size", "Streams advanced by one backend call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.backend_seconds = Histogram("charlm_backend_call_seconds", "Duration of one backend call",
                                         ["signature"], buckets=LATENCY_BUCKETS, registry=r)
        self.cancelled = Counter("charlm_cancelled_streams", "Streams dropped because their client went away",
                                 registry=r)
        self.responses = Counter("charlm_responses", "HTTP responses by endpoint and status",
                                 ["endpoint", "status"], registry=r)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    metrics = app.extensions["charlm.metrics"] = Metrics()

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def count_response(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.responses.labels(endpoint, str(response.status_code)).inc()
        return response


def current_metrics() -> Metrics:
    return current_app.extensions["charlm.metrics"]
