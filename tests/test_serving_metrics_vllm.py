"""The per-request series in vLLM's manner (end-to-end latency, queue time, prompt and generated characters,
finished streams by reason, all labelled with the model name), and a stream that fails after its 200 went out
counted as status="stream_error", not as a 200."""
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from model_interface.errors import ModelUnavailable
from model_interface.signatures import SamplingSettings
from serving.app import create_app
from serving.batcher import Batcher, Done, Failed, Stream
from serving.errors import APIError
from serving.generation import RequestStreams
from serving.metrics import Metrics
from serving.settings import Settings
from serving_helpers import metric_value, sse_payloads, wait_until

ROOT = Path(__file__).resolve().parents[1]
MODEL = 'model_name="charlm"'
COMPLETIONS = f'endpoint="/v1/completions",{MODEL}'


def scrape(app) -> str:
    return app.extensions["charlm.metrics"].exposition().decode()


class Delta:
    """Changes of the app's series since this was made."""

    def __init__(self, app):
        self.app, self.before = app, scrape(app)

    def __call__(self, name: str, labels: str = "") -> float:
        after = scrape(self.app)
        return (metric_value(after, name, labels) or 0) - (metric_value(self.before, name, labels) or 0)

    def reasons(self) -> dict:
        return {reason: self("charlm_request_success_total", f'finished_reason="{reason}",{MODEL}')
                for reason in ("stop", "length", "abort", "error")}


def complete(client, **body):
    return client.post("/v1/completions", json={"model": "charlm", **body})


@pytest.fixture(scope="module")
def slow_app(exported_model):
    """Chunks of 2 characters: a long stream lasts seconds, so the test can act while it runs."""
    return create_app({"model_dir": exported_model[0], "first_chunk": 2, "max_chunk": 2, "max_streams": 4})


def test_lengths_stops_characters_and_latency(app):
    client = app.test_client()
    plain = complete(client, prompt="ROMEO:\n", max_tokens=40, seed=3, temperature=0.8).get_json()
    text = plain["choices"][0]["text"]
    delta = Delta(app)

    streamed = complete(client, prompt="ROMEO:", max_tokens=30, n=2, stream=True)
    sent = "".join(p["choices"][0]["text"] for p in sse_payloads(streamed.get_data(as_text=True)) if p != "[DONE]")
    assert len(sent) == 60
    # The same seeded text, cut at a stop string taken from it: the choice finishes "stop".
    stopped = complete(client, prompt="ROMEO:\n", max_tokens=40, seed=3, temperature=0.8, stop=[text[8:10]])
    assert stopped.get_json()["choices"][0]["finish_reason"] == "stop"
    assert client.post("/v1/generate", json={"prompt": "KING:", "max_chars": 10}).status_code == 200

    assert delta.reasons() == {"stop": 1, "length": 3, "abort": 0, "error": 0}  # one per stream (choice)
    assert delta("charlm_prompt_chars_total", MODEL) == 2 * 6 + 7 + 5  # each stream's own prompt
    # Characters generated for the requests as they reached them: the stopped one's chunks (4, 8, 16, ... characters)
    # up to the one its stop string ends in.
    stop_end = text.find(text[8:10]) + 2
    stopped_chars = next(total for total in (4, 12, 28, 40) if total >= stop_end)
    assert delta("charlm_generation_chars_total", MODEL) == 60 + stopped_chars + 10
    assert delta("charlm_e2e_request_latency_seconds_count", COMPLETIONS) == 2
    assert delta("charlm_e2e_request_latency_seconds_count", f'endpoint="/v1/generate",{MODEL}') == 1
    assert delta("charlm_e2e_request_latency_seconds_sum", COMPLETIONS) > 0
    # A request's end-to-end time is at least its time to first character.
    assert delta("charlm_e2e_request_latency_seconds_sum", COMPLETIONS) >= \
        delta("charlm_time_to_first_char_seconds_sum", 'endpoint="/v1/completions"')
    assert delta("charlm_request_queue_time_seconds_count", MODEL) == 4  # every stream had a first call
    assert delta("charlm_responses_total", f'endpoint="/v1/completions",{MODEL},status="200"') == 2


def test_every_new_series_is_labelled_with_the_model_name(exported_model):
    app = create_app({"model_dir": exported_model[0], "model_name": "bard"})
    complete(app.test_client(), model="bard", prompt="A", max_tokens=5)
    text = scrape(app)
    for name in ("charlm_e2e_request_latency_seconds_count", "charlm_request_queue_time_seconds_count",
                 "charlm_prompt_chars_total", "charlm_generation_chars_total"):
        labelled = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert labelled and all('model_name="bard"' in line for line in labelled), name
    assert metric_value(text, "charlm_request_success_total", 'finished_reason="length",model_name="bard"') == 1
    assert metric_value(text, "charlm_responses_total",
                        'endpoint="/v1/completions",model_name="bard",status="200"') == 1


class FailAfter:
    """The real backend for the first `calls` generate calls, then TF Serving 'down'."""

    def __init__(self, backend, calls):
        self.backend, self.calls = backend, calls

    def call(self, *args, **kwargs):
        self.calls -= 1
        if self.calls < 0:
            raise ModelUnavailable("TF Serving at tf-serving:8500: UNAVAILABLE (test)")
        return self.backend.call(*args, **kwargs)


@pytest.fixture
def failing(slow_app):
    batcher = slow_app.extensions["charlm.batcher"]
    real = batcher.backend

    def fail_after(calls):
        batcher.backend = FailAfter(real, calls)

    yield fail_after
    batcher.backend = real
    assert wait_until(lambda: batcher.count() == 0)


def test_a_stream_failing_after_its_headers_is_a_stream_error_not_a_200(slow_app, failing):
    failing(1)
    delta = Delta(slow_app)
    response = complete(slow_app.test_client(), prompt="A", max_tokens=100, n=2, stream=True)
    assert response.status_code == 200  # the first chunks were out before the backend failed
    payloads = sse_payloads(response.get_data(as_text=True))
    assert payloads[-1]["error"]["code"] == "backend_unavailable"
    status = f'endpoint="/v1/completions",{MODEL},status="%s"'
    assert delta("charlm_responses_total", status % "stream_error") == 1
    assert delta("charlm_responses_total", status % "200") == 0
    assert delta.reasons() == {"stop": 0, "length": 0, "abort": 0, "error": 2}  # both choices failed
    assert delta("charlm_generation_chars_total", MODEL) == 4  # the first call's 2 characters, each choice
    assert delta("charlm_e2e_request_latency_seconds_count", COMPLETIONS) == 1


def test_a_stream_failing_before_its_headers_keeps_its_status(slow_app, failing):
    failing(0)
    delta = Delta(slow_app)
    response = complete(slow_app.test_client(), prompt="A", max_tokens=100, stream=True)
    assert response.status_code == 503
    status = f'endpoint="/v1/completions",{MODEL},status="%s"'
    assert delta("charlm_responses_total", status % "503") == 1
    assert delta("charlm_responses_total", status % "stream_error") == 0
    assert delta.reasons()["error"] == 1


def test_a_client_gone_mid_stream_is_an_abort(slow_app):
    delta = Delta(slow_app)
    batcher = slow_app.extensions["charlm.batcher"]
    response = slow_app.test_client().post("/v1/completions", json={
        "model": "charlm", "prompt": "A", "max_tokens": 8192, "stream": True}, buffered=False)
    body, first = iter(response.response), b""
    while b"data: " not in first:
        first += next(body)
    response.close()  # what the WSGI server does when the client's socket is gone
    assert wait_until(lambda: batcher.count() == 0)
    assert delta.reasons() == {"stop": 0, "length": 0, "abort": 1, "error": 0}
    # The 200 did go out: a client leaving is not a failed response.
    assert delta("charlm_responses_total", f'endpoint="/v1/completions",{MODEL},status="200"') == 1
    assert delta("charlm_e2e_request_latency_seconds_count", COMPLETIONS) == 1


def test_a_client_closed_failure_is_an_abort_not_an_error(slow_app):
    """serving/disconnect.py wakes a plain request whose client hung up with a 499 failure: the client went away."""
    delta = Delta(slow_app)
    batcher = slow_app.extensions["charlm.batcher"]
    with slow_app.test_request_context():
        generation = RequestStreams.submit(batcher, slow_app.extensions["charlm.backend"].model(), ["A", "B"], 8192,
                                           [SamplingSettings(seed=1)] * 2, "/v1/completions",
                                           slow_app.config["CHARLM"], slow_app.extensions["charlm.metrics"])
        generation.sink.put(Failed(0, APIError(499, "gone (test)", code="client_closed_request")))
        with pytest.raises(APIError):
            for _ in generation.events():
                pass
        generation.cancel()
    assert wait_until(lambda: batcher.count() == 0)
    assert delta.reasons() == {"stop": 0, "length": 0, "abort": 2, "error": 0}


class GatedBackend:
    """The real backend, whose first call waits for `gate`: later streams queue behind it."""

    def __init__(self, backend):
        self.backend, self.gate, self.entered = backend, threading.Event(), threading.Event()

    def call(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(30)
        return self.backend.call(*args, **kwargs)


def test_queue_time_is_the_wait_for_the_first_backend_call(app):
    local = app.extensions["charlm.backend"]  # only called, never changed
    model = local.model()
    backend = GatedBackend(local)
    metrics = Metrics("charlm")
    batcher = Batcher(backend, Settings(model_dir="unused"), metrics)
    sink = queue.SimpleQueue()

    def stream(index):
        return Stream(index=index, prompt="A", state=None, remaining=4, sampling=SamplingSettings(seed=index),
                      version=model.version, state_size=model.state_size, sink=sink)

    batcher.submit([stream(0)])
    assert backend.entered.wait(30)  # stream 0's first call is running (and held)
    batcher.submit([stream(1)])  # waits for the next call
    time.sleep(0.3)
    backend.gate.set()
    done = set()
    while len(done) < 2:
        event = sink.get(timeout=30)
        if isinstance(event, Done):
            done.add(event.index)
    sample = metrics.registry.get_sample_value
    assert sample("charlm_request_queue_time_seconds_count", {"model_name": "charlm"}) == 2
    assert sample("charlm_request_queue_time_seconds_sum", {"model_name": "charlm"}) >= 0.3
    assert sample("charlm_request_queue_time_seconds_bucket", {"model_name": "charlm", "le": "0.25"}) <= 1


MULTIPROCESS = """
from serving.metrics import Metrics
for _ in range(2):  # two apps in one process write to the same files, as gunicorn's workers do to one directory
    metrics = Metrics("charlm")
    metrics.queue_depth.set(3)
    metrics.request_success.labels("length").inc()
    metrics.e2e_latency.labels("/v1/completions").observe(0.5)
print(metrics.exposition().decode())
"""


def test_multiprocess_mode_adds_up_the_labelled_series(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    text = subprocess.run([sys.executable, "-c", MULTIPROCESS], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=60).stdout
    assert metric_value(text, "charlm_request_success_total", f'finished_reason="length",{MODEL}') == 2
    assert metric_value(text, "charlm_e2e_request_latency_seconds_count", COMPLETIONS) == 2
    assert metric_value(text, "charlm_queue_depth", MODEL) == 3  # livesum of one live process
