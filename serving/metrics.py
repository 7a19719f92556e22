"""Prometheus metrics (prometheus-client). Under gunicorn every worker writes its values to
PROMETHEUS_MULTIPROC_DIR (set by serving/gunicorn.conf.py) and /metrics adds them up across workers;
without it (tests, a single process) the app's own registry is exposed.

Beside the gateway's own series, per-request series in vLLM's manner (vllm:e2e_request_latency_seconds,
vllm:request_queue_time_seconds, vllm:prompt_tokens_total, vllm:generation_tokens_total,
vllm:request_success_total{finished_reason}), in characters, labelled with the served model's name. A generating
request's numbers are kept by its `RequestRecord` (serving/generation.py's RequestStreams feeds it)."""
from __future__ import annotations

import os
import threading
import time

from flask import Flask, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PER_CHAR_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A stream waits for the backend call in flight (milliseconds), or for room in a full batch (longer).
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A whole request: 8,192 characters take seconds on 2 cores, more when many streams share the calls.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
FINISH_REASONS = ("stop", "length", "abort", "error")
STREAM_ERROR = "stream_error"  # charlm_responses_total's status of a stream that failed after its 200 went out


class _ModelLabelled:
    """A metric whose first label, model_name, is bound: `.labels(...)` takes the others, so callers name only those."""

    def __init__(self, metric, model_name: str):
        self.metric, self.model_name = metric, model_name

    def labels(self, *values: str):
        return self.metric.labels(self.model_name, *values)


class Metrics:
    def __init__(self, model_name: str = ""):
        # A registry per app, so apps made in one process (tests) do not collide; in multiprocess mode the
        # values live in the shared directory whatever registry holds the objects.
        self.registry = r = CollectorRegistry()
        self.model_name = m = model_name
        # Unlabelled (as before): tests outside the metrics' own read these series by their exact label strings.
        self.time_to_first_char = Histogram(
            "charlm_time_to_first_char_seconds", "From request arrival to the first generated character",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.chars = Counter("charlm_generated_chars", "Characters generated", registry=r)
        self.active_streams = Gauge("charlm_active_streams", "Streams admitted and not finished (per worker, summed)",
                                    registry=r, multiprocess_mode="livesum")
        self.cancelled = Counter("charlm_cancelled_streams", "Streams dropped because their client went away",
                                 registry=r)
        # Labelled with the model name (bound here: callers pass the other labels, if any).
        self.inter_char = _ModelLabelled(Histogram(
            "charlm_inter_char_seconds", "Time between chunks of a stream divided by the chunk's characters",
            ["model_name", "endpoint"], buckets=PER_CHAR_BUCKETS, registry=r), m)
        self.queue_depth = Gauge("charlm_queue_depth", "Admitted streams not in the current backend call",
                                 ["model_name"], registry=r, multiprocess_mode="livesum").labels(m)
        # Admission (serving/batcher.py): requests waiting for stream slots past CHARLM_MAX_STREAMS, and how each
        # request's wait for its slots ended (0 for one admitted at once).
        self.admission_queue_depth = Gauge(
            "charlm_admission_queue_depth", "Requests waiting for stream slots (per worker, summed)", ["model_name"],
            registry=r, multiprocess_mode="livesum").labels(m)
        self.admission_wait = _ModelLabelled(Histogram(
            "charlm_admission_wait_seconds", "A request's wait for stream slots, by outcome: admitted, queue_full, "
            "timeout, gone (its client left), shutdown", ["model_name", "outcome"], buckets=QUEUE_BUCKETS,
            registry=r), m)
        self.batch_size = Histogram("charlm_batch_size", "Streams advanced by one backend call", ["model_name"],
                                    buckets=BATCH_BUCKETS, registry=r).labels(m)
        self.backend_seconds = _ModelLabelled(Histogram(
            "charlm_backend_call_seconds", "Duration of one backend call", ["model_name", "signature"],
            buckets=LATENCY_BUCKETS, registry=r), m)
        self.responses = _ModelLabelled(Counter(
            "charlm_responses", "HTTP responses by endpoint and status (stream_error: failed after its 200 was sent)",
            ["model_name", "endpoint", "status"], registry=r), m)
        # vLLM's per-request series, in characters.
        self.e2e_latency = _ModelLabelled(Histogram(
            "charlm_e2e_request_latency_seconds", "From request arrival to the end of its reply",
            ["model_name", "endpoint"], buckets=REQUEST_BUCKETS, registry=r), m)
        self.queue_time = Histogram(
            "charlm_request_queue_time_seconds", "From a stream's admission to the start of its first backend call",
            ["model_name"], buckets=QUEUE_BUCKETS, registry=r).labels(m)
        self.prompt_chars = Counter("charlm_prompt_chars", "Prompt characters admitted (each stream's own prompt)",
                                    ["model_name"], registry=r).labels(m)
        self.generation_chars = Counter(
            "charlm_generation_chars", "Characters generated for requests, as they reached them", ["model_name"],
            registry=r).labels(m)
        self.request_success = _ModelLabelled(Counter(
            "charlm_request_success", "Streams (choices) finished, by reason: stop, length, abort (client gone), error",
            ["model_name", "finished_reason"], registry=r), m)
        for reason in FINISH_REASONS:  # every reason exposed from the start, at 0
            self.request_success.labels(reason)

    def record_request(self, endpoint: str, started: float) -> "RequestRecord":
        """The record of the generating request being served now (kept in `g`: its response is counted by it)."""
        record = g.charlm_request = RequestRecord(self, endpoint, started)
        return record

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestRecord:
    """The vLLM-manner numbers of one generating request: its prompt characters, the characters generated for it,
    how each of its streams finished; closed once, at the end of its reply (end-to-end latency, and a streamed
    reply's response count: "200", or "stream_error" if it failed after its headers were out)."""

    def __init__(self, metrics: Metrics, endpoint: str, started: float):
        self.metrics, self.endpoint, self.started = metrics, endpoint, started
        self.failed = False
        self._response: tuple[str, str] | None = None  # (endpoint rule, status) of a streamed reply, counted at close
        self._closed = False
        self._lock = threading.Lock()

    def admitted(self, prompt_chars: int) -> None:
        self.metrics.prompt_chars.inc(prompt_chars)

    def generated(self, chars: int) -> None:
        self.metrics.generation_chars.inc(chars)

    def finished(self, reason: str, streams: int = 1) -> None:
        """`streams` of the request's streams ended for `reason` (one of FINISH_REASONS)."""
        if streams:
            self.metrics.request_success.labels(reason).inc(streams)
        if reason == "error":
            self.failed = True

    def defer_response(self, endpoint: str, status: str) -> bool:
        """A streamed reply is counted when it ends, not when its headers go; False if the request is over already."""
        with self._lock:
            if self._closed:
                return False
            self._response = (endpoint, status)
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.metrics.e2e_latency.labels(self.endpoint).observe(time.perf_counter() - self.started)
        if self._response is not None:
            endpoint, status = self._response
            self.metrics.responses.labels(endpoint, STREAM_ERROR if self.failed else status).inc()


CONTENT_TYPE = CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    metrics = app.extensions["charlm.metrics"] = Metrics(app.config["CHARLM"].served_name)

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def count_response(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        status = str(response.status_code)
        record = g.get("charlm_request")
        if record is not None and response.is_streamed and record.defer_response(endpoint, status):
            return response
        metrics.responses.labels(endpoint, status).inc()
        return response


def current_metrics() -> Metrics:
    return current_app.extensions["charlm.metrics"]
