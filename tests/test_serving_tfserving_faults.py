"""Faults of the TF Serving path (issue 13, item 3), each against serving.tfserving_standin — a stand-in speaking TF
Serving's PredictionService over the session's SavedModel, not TF Serving — driven into the fault while the
gateway serves: TF Serving killed mid-stream, back on the same port, a call past its deadline, a new version
appearing (and the old one unloaded) mid-stream.

The gateway is create_app's with the `tfserving` backend, on a threaded werkzeug server on 127.0.0.1, so streams
are real HTTP streams read event by event while the fault happens. Each stand-in call answers 20 ms late so a
stream of a few hundred characters (8 a call) lasts seconds. Every read has a timeout and SSE keep-alives are off,
so a stream that hangs fails its test instead of hanging it.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import pytest
from werkzeug.serving import make_server

from model_interface.signatures import SamplingSettings
from serving.app import create_app
from serving.errors import BACKEND_RETRY_AFTER_S
from serving.tfserving_standin import SavedModelPredictionService, StandInServer
from serving_helpers import wait_until

READ_TIMEOUT_S = 20.0  # no event for this long: the stream hangs (the test fails)
CALL_DELAY_S = 0.02  # every stand-in call answers this late, so streams last while the test acts
ENVELOPE = {"message", "type", "param", "code"}


@contextlib.contextmanager
def gateway(address: str, **config):
    """The gateway on TF Serving at `address`, served on 127.0.0.1: (app, httpx client)."""
    settings = {"backend": "tfserving", "tfserving_address": address, "first_chunk": 4, "max_chunk": 8,
                "sse_keepalive_s": 0, "model_poll_s": 3600, **config}
    app = create_app(settings)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, name="gateway", daemon=True)
    thread.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{httpd.server_port}", timeout=READ_TIMEOUT_S)
    try:
        yield app, http
    finally:
        http.close()
        httpd.shutdown()
        thread.join(10)
        app.extensions["charlm.backend"].close()


@pytest.fixture
def standin(loaded_model):
    """A stand-in serving the session's model as version 1, 20 ms a call, that a test may stop and start."""
    service = SavedModelPredictionService("charlm", {1: loaded_model})
    service.delay_s = CALL_DELAY_S
    with StandInServer(service) as server:
        yield server


class EventStream:
    """One streamed POST, its server-sent events read one at a time (each read bounded by READ_TIMEOUT_S)."""

    def __init__(self, http: httpx.Client, path: str, body: dict):
        self._context = http.stream("POST", path, json={**body, "stream": True})
        self.response = self._context.__enter__()  # returns once the status and headers are in
        self._lines = self.response.iter_lines()
        self.payloads: list = []

    def next(self):
        """The next `data:` payload (JSON-decoded, "[DONE]" as the string), or None once the stream has ended."""
        for line in self._lines:
            if line.startswith("data: "):
                data = line[len("data: "):]
                self.payloads.append(data if data == "[DONE]" else json.loads(data))
                return self.payloads[-1]
        return None

    def rest(self) -> list:
        """Read to the end of the stream; every payload it sent."""
        while self.next() is not None:
            pass
        self._context.__exit__(None, None, None)
        return self.payloads


def completion_text(payloads) -> str:
    return "".join(p["choices"][0]["text"] for p in payloads if isinstance(p, dict) and p.get("choices"))


def generated_text(payloads) -> str:
    return "".join(p["text"] for p in payloads if isinstance(p, dict) and "text" in p)


def assert_envelope(error: dict, code: str) -> dict:
    assert set(error) == ENVELOPE and error["code"] == code and error["type"] == "server_error", error
    assert error["message"] and "Traceback" not in error["message"]
    return error


def assert_unavailable(response: httpx.Response) -> dict:
    """A 503 backend_unavailable in OpenAI's envelope, with the Retry-After a client should wait."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["Retry-After"] == str(BACKEND_RETRY_AFTER_S)
    return assert_envelope(response.json()["error"], "backend_unavailable")


def undisturbed(model_client, prompt: str, chars: int, seed: int) -> str:
    """The text the model gives for this seeded request with nothing going wrong (in-process, one call)."""
    return model_client.generate([prompt], chars, SamplingSettings(seed=seed))["text"][0]


def generate_calls(service, since: int = 0) -> list:
    return [r for r in service.requests[since:] if r.model_spec.signature_name == "generate"]


def rows_of(request) -> int:
    return request.inputs["state"].tensor_shape.dim[0].size


# --- (a) TF Serving killed mid-stream ------------------------------------------------------------------------------

def test_tfserving_killed_mid_stream_ends_the_streams_with_an_error_event_and_503s(standin, model_client):
    with gateway(standin.address) as (app, http):
        completion = EventStream(http, "/v1/completions", {"model": "charlm", "prompt": "ROMEO:\n",
                                                           "max_tokens": 3000, "seed": 1})
        native = EventStream(http, "/v1/generate", {"prompt": "JULIET:\n", "max_chars": 3000, "seed": 2})
        assert completion.response.status_code == native.response.status_code == 200
        assert completion_text([completion.next()]) and generated_text([native.next()])

        standin.stop()
        killed = time.monotonic()
        for stream, text, expected in ((completion, completion_text, undisturbed(model_client, "ROMEO:\n", 3000, 1)),
                                       (native, generated_text, undisturbed(model_client, "JULIET:\n", 3000, 2))):
            payloads = stream.rest()
            # The stream ends with one error event in OpenAI's envelope (its clients raise it), not [DONE], not a
            # cut connection, not a 500; what it sent before is the undisturbed text's beginning.
            assert "[DONE]" not in payloads
            assert_envelope(payloads[-1]["error"], "backend_unavailable")
            assert all("error" not in p for p in payloads[:-1])
            sent = text(payloads[:-1])
            assert sent and len(sent) < len(expected) and expected.startswith(sent)
        assert time.monotonic() - killed < 10  # a failed call, not the 120 s idle timeout

        # While it is down: not ready, and new requests, plain or streamed, get a 503 they can retry.
        assert_unavailable(http.get("/readyz"))
        error = assert_unavailable(http.post("/v1/completions", json={"model": "charlm", "prompt": "A",
                                                                      "max_tokens": 5}))
        assert "TF Serving at " + standin.address in error["message"]
        assert_unavailable(http.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5,
                                                              "stream": True}))
        assert_unavailable(http.post("/v1/chat/completions", json={
            "model": "charlm", "messages": [{"role": "user", "content": "Hail"}], "max_completion_tokens": 5}))
        assert http.get("/healthz").status_code == 200  # liveness: the process is fine, no restart wanted
        assert wait_until(lambda: app.extensions["charlm.batcher"].count() == 0, timeout=5)  # none left behind


# --- (b) TF Serving back on the same port ----------------------------------------------------------------------------

def test_tfserving_back_on_the_same_port_is_used_again_without_a_restart(standin, loaded_model, model_client):
    body = {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 200, "seed": 3}
    expected = undisturbed(model_client, "ROMEO:\n", 200, 3)
    with gateway(standin.address) as (app, http):
        running = EventStream(http, "/v1/completions", body)
        running.next()
        standin.stop()
        assert_envelope(running.rest()[-1]["error"], "backend_unavailable")
        assert_unavailable(http.get("/readyz"))

        # A new TF Serving process on the same port (a fresh stand-in: nothing of the old one survives).
        restarted = SavedModelPredictionService("charlm", {1: loaded_model})
        standin.start(restarted)
        # gRPC reconnects by itself (reconnect backoff capped at 2 s): ready again within seconds, same app.
        assert wait_until(lambda: http.get("/readyz").status_code == 200, timeout=15, interval=0.2)
        assert http.get("/readyz").json() == {"status": "ready", "backend": "tfserving", "model": "charlm",
                                              "version": 1}
        again = EventStream(http, "/v1/completions", body).rest()
        assert again[-1] == "[DONE]" and completion_text(again) == expected
        plain = http.post("/v1/completions", json=body)
        assert plain.status_code == 200 and plain.json()["choices"][0]["text"] == expected
        assert generate_calls(restarted)  # served by the new one


def test_a_gateway_started_before_tfserving_serves_once_it_answers(standin, loaded_model, model_client):
    standin.stop()  # TF Serving not up yet when the gateway starts (a pod scheduled first)
    with gateway(standin.address) as (app, http):
        error = assert_unavailable(http.get("/readyz"))
        assert "TF Serving at " + standin.address in error["message"]
        assert_unavailable(http.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5}))
        standin.start(SavedModelPredictionService("charlm", {1: loaded_model}))
        # The readiness probe's check loads the version as soon as TF Serving answers; requests follow.
        assert wait_until(lambda: http.get("/readyz").status_code == 200, timeout=15, interval=0.2)
        reply = http.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 30, "seed": 4})
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == undisturbed(model_client, "A", 30, 4)


# --- (c) a call past its deadline ------------------------------------------------------------------------------------

def test_a_late_call_is_sent_once_more_and_its_streams_go_on(standin, model_client):
    """One generate call stuck past its deadline, carrying the rows of two requests: it is sent again, whole, and
    both streams go on to the very text they would have given without it."""
    service = standin.service
    with gateway(standin.address, tfserving_timeout_s=1.0) as (app, http):
        first = EventStream(http, "/v1/completions", {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 400,
                                                      "seed": 5})
        second = EventStream(http, "/v1/generate", {"prompt": "JULIET:\n", "max_chars": 400, "seed": 6})
        first.next(), second.next()  # both have had a call: they share every call from now on
        service.delay_next(4.0, calls=1, signature="generate")  # the next one answers 4 s late (deadline 1 s)
        one, two = first.rest(), second.rest()
        assert one[-1] == two[-1] == "[DONE]" and not [p for p in one + two if "error" in p]
        assert completion_text(one) == undisturbed(model_client, "ROMEO:\n", 400, 5)
        assert generated_text(two) == undisturbed(model_client, "JULIET:\n", 400, 6)

        late, = service.delayed
        assert rows_of(late) == 2  # the late call carried both requests' rows
        after = service.requests[service.requests.index(late) + 1:]
        assert any(request == late for request in after)  # sent again, the same request
        assert app.extensions["charlm.backend"].late_calls_retried >= 1


def test_a_call_late_again_is_a_504_and_the_gateway_serves_once_tfserving_keeps_up(standin, model_client):
    service = standin.service
    body = {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 40, "seed": 7}
    with gateway(standin.address, tfserving_timeout_s=0.5) as (app, http):
        running = EventStream(http, "/v1/generate", {"prompt": "JULIET:\n", "max_chars": 3000, "seed": 8})
        running.next()
        service.delay_s = 2.0  # TF Serving now slower than the deadline on every call
        error = assert_envelope(running.rest()[-1]["error"], "backend_timeout")
        assert "did not answer within 0.5 s" in error["message"] and "twice" in error["message"]
        calls = generate_calls(service)
        assert calls[-1] == calls[-2] != calls[-3]  # the failing call was sent twice, then given up

        reply = http.post("/v1/completions", json=body)  # a new request: the status, before any text
        assert reply.status_code == 504 and "Retry-After" not in reply.headers
        assert_envelope(reply.json()["error"], "backend_timeout")
        # A score call serves one request: its own 504, after one deadline, not sent twice.
        scores = len([r for r in service.requests if r.model_spec.signature_name == "score"])
        reply = http.post("/v1/score", json={"text": "First Citizen:"})
        assert reply.status_code == 504 and "twice" not in reply.json()["error"]["message"]
        assert len([r for r in service.requests if r.model_spec.signature_name == "score"]) == scores + 1
        assert http.get("/readyz").status_code == 504

        service.delay_s = CALL_DELAY_S  # TF Serving keeps up again: served, no restart
        reply = http.post("/v1/completions", json=body)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == undisturbed(
            model_client, "ROMEO:\n", 40, 7)
        assert http.get("/readyz").status_code == 200


# --- (d) a new version mid-stream ------------------------------------------------------------------------------------

def test_a_new_version_mid_stream_running_streams_finish_on_theirs_new_ones_take_it(standin, loaded_model,
                                                                                    model_client):
    """TF Serving keeping two versions (model_version_policy latest 2): version 2 appears while a stream runs on
    1. (Both are the session's SavedModel, so the texts agree; which version ran is in each call and reply.)"""
    service = standin.service
    expected = undisturbed(model_client, "ROMEO:\n", 600, 9)
    with gateway(standin.address, model_poll_s=0) as (app, http):
        old = EventStream(http, "/v1/generate", {"prompt": "ROMEO:\n", "max_chars": 600, "seed": 9})
        assert old.next()["version"] == 1

        service.set_versions({1: loaded_model, 2: loaded_model})
        appeared = len(service.requests)
        # Traffic sets off the look for a newer version (in the background): new requests go to 2.
        assert wait_until(lambda: http.get("/v1/models").json()["data"][0]["version"] == 2, timeout=10)
        new = EventStream(http, "/v1/generate", {"prompt": "ROMEO:\n", "max_chars": 100, "seed": 9}).rest()
        assert new[-1] == "[DONE]" and {p["version"] for p in new[:-1]} == {2}
        assert generated_text(new) == expected[:100]

        old_payloads = old.rest()
        assert old_payloads[-1] == "[DONE]" and {p["version"] for p in old_payloads[:-1]} == {1}
        assert old_payloads[-2]["finish_reason"] == "length" and generated_text(old_payloads) == expected
        # Each call names its version: after 2 appeared the old stream's calls still went to 1, the new one's to 2.
        versions = {r.model_spec.version.value for r in generate_calls(service, appeared)}
        assert versions == {1, 2}

        # The old version's continuation state is refused, naming both versions; the new one's continues.
        refused = http.post("/v1/generate", json={"state": old_payloads[-2]["state"], "max_chars": 10})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_state" and error["param"] == "state"
        assert "version 1" in error["message"] and "version 2" in error["message"]
        continued = http.post("/v1/generate", json={"state": new[-2]["state"], "max_chars": 10})
        assert continued.status_code == 200 and continued.json()["version"] == 2
        assert continued.json()["text"] == expected[100:110]


def test_the_old_version_unloaded_mid_stream_ends_its_streams_and_new_ones_take_the_new(standin, loaded_model,
                                                                                      model_client):
    """TF Serving's default policy keeps one version: 2 replaces 1 while a stream runs on 1. That stream ends with
    version_unloaded; the failed call itself sets off the look for 2, so new requests need not wait for the next
    poll (an hour here)."""
    service = standin.service
    with gateway(standin.address) as (app, http):
        old = EventStream(http, "/v1/generate", {"prompt": "ROMEO:\n", "max_chars": 3000, "seed": 10})
        old.next()
        service.set_versions({2: loaded_model})
        error = assert_envelope(old.rest()[-1]["error"], "version_unloaded")
        assert "version 1" in error["message"]
        backend = app.extensions["charlm.backend"]
        assert wait_until(lambda: backend.model().version == 2, timeout=10)  # no request asked: the failure did
        assert http.get("/readyz").json()["version"] == 2
        reply = http.post("/v1/generate", json={"prompt": "ROMEO:\n", "max_chars": 20, "seed": 10})
        assert reply.status_code == 200 and reply.json()["version"] == 2
        assert reply.json()["text"] == undisturbed(model_client, "ROMEO:\n", 20, 10)
